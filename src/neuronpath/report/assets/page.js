// neuronpath report: the path explorer and the neuron cards, drawn from the inlined JSON.
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const ROWS = DATA.rows;
const PAGE = 50;
const state = { page: 0, sort: null, descending: true, filter: "", search: "", selected: null };

function fmt(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits === undefined ? 3 : digits);
}

// A colour for t in [0, 1]: dark blue -> teal -> yellow (viridis-like).
function colour(t, alpha) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
  return `rgba(${c[0]},${c[1]},${c[2]},${alpha})`;
}

// The image with a neuron's activation laid over it where its tokens sit (no map: the reason).
function heatmap(thumb, map, size, layer) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  canvas.className = "heatmap";
  const context = canvas.getContext("2d");
  const picture = new Image();
  picture.onload = () => {
    context.drawImage(picture, 0, 0, size, size);
    if (!map) return;
    const cellW = size / map.w, cellH = size / map.h;
    map.q.forEach((q, k) => {
      context.fillStyle = colour(q / 255, 0.55);
      context.fillRect((k % map.w) * cellW, Math.floor(k / map.w) * cellH, cellW + 0.5, cellH + 0.5);
    });
  };
  picture.src = thumb;
  const layout = DATA.layouts && DATA.layouts[layer];
  canvas.title = map ? `activation ${fmt(map.lo)} .. ${fmt(map.hi)} over the image`
    : `no map: ${layout && layout.why ? layout.why : "no token layout"}`;
  return canvas;
}

function visibleRows() {
  let rows = ROWS.id.map((_, i) => i);
  if (state.filter !== "") rows = rows.filter(i => ROWS.label[i] === Number(state.filter));
  if (state.search) rows = rows.filter(i => ROWS.id[i].toLowerCase().includes(state.search));
  if (state.sort) {
    const value = columnValue(state.sort);
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === y) return a - b;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * (state.descending ? -1 : 1);
    });
  }
  return rows;
}

function columnValue(key) {
  if (key === "image") return i => ROWS.id[i];
  if (key === "label") return i => DATA.classes[ROWS.label[i]];
  if (key === "pred") return i => ROWS.predName[i];
  if (key === "prob") return i => ROWS.prob[i];
  const [kind, method] = key.split(":");
  return kind === "jas" ? i => ROWS.jas[method][i] : i => ROWS.removed[method][i];
}

function columns() {
  const cols = [["thumb", ""], ["image", "image"], ["label", "label"], ["pred", "prediction"],
                ["prob", "P(label)"]];
  DATA.methods.forEach(m => cols.push([`jas:${m}`, `JAS ${m}`]));
  if (ROWS.removed) DATA.methods.forEach(m => cols.push([`removed:${m}`, `ΔP/P remove ${m}`]));
  return cols;
}

function renderHead() {
  const tr = document.createElement("tr");
  columns().forEach(([key, name]) => {
    const th = document.createElement("th");
    th.textContent = name + (state.sort === key ? (state.descending ? " ▼" : " ▲") : "");
    if (key !== "thumb") th.onclick = () => {
      state.descending = state.sort === key ? !state.descending : true;
      state.sort = key; state.page = 0; render();
    };
    tr.appendChild(th);
  });
  const head = document.querySelector("#images thead");
  head.replaceChildren(tr);
}

function renderTable() {
  const rows = visibleRows();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  state.page = Math.min(state.page, pages - 1);
  document.getElementById("page-info").textContent =
    `${rows.length} images — page ${state.page + 1} of ${pages}`;
  const body = document.querySelector("#images tbody");
  body.replaceChildren();
  rows.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(i => {
    const id = ROWS.id[i], tr = document.createElement("tr");
    tr.dataset.image = id;
    if (id === state.selected) tr.className = "selected";
    const cells = [null, id.split("/").pop(), DATA.classes[ROWS.label[i]], ROWS.predName[i], fmt(ROWS.prob[i])];
    DATA.methods.forEach(m => cells.push(fmt(ROWS.jas[m][i], 4)));
    if (ROWS.removed) DATA.methods.forEach(m => cells.push(fmt(ROWS.removed[m][i] * 100, 1) + " %"));
    cells.forEach((text, k) => {
      const td = document.createElement("td");
      if (k === 0) {
        const detail = DATA.details[id];
        if (detail) { const img = document.createElement("img"); img.src = detail.thumb; td.appendChild(img); }
      } else td.textContent = text;
      if (k === 1) td.title = id;
      tr.appendChild(td);
    });
    tr.onclick = () => select(id);
    body.appendChild(tr);
  });
}

function select(id) {
  state.selected = id;
  if (location.hash !== `#image=${encodeURIComponent(id)}`) history.replaceState(null, "", `#image=${encodeURIComponent(id)}`);
  document.querySelectorAll("#images tbody tr").forEach(tr => tr.classList.toggle("selected", tr.dataset.image === id));
  const panel = document.getElementById("detail");
  panel.replaceChildren();
  const i = ROWS.id.indexOf(id), detail = DATA.details[id];
  const title = document.createElement("h3");
  title.textContent = `${id} — label ${DATA.classes[ROWS.label[i]]}, predicted ${ROWS.predName[i]}, P(label) ${fmt(ROWS.prob[i])}`;
  panel.appendChild(title);
  if (!detail) {
    const p = document.createElement("p");
    p.className = "note";
    p.textContent = `No activation details for this image: the page holds them for the first ${DATA.capped.details} images (neuronpath report --images N).`;
    panel.appendChild(p);
    return;
  }
  DATA.methods.forEach(method => {
    const path = detail.paths[method];
    if (!path) return;
    const h = document.createElement("h4");
    let text = `${method} path — final JAS ${fmt(ROWS.jas[method][i], 4)}`;
    const ev = detail.eval && detail.eval[method];
    if (ev && ev.remove !== null) text += ` — removing the whole path: P(label) ${fmt(ev.base)} → ${fmt(ev.remove)} (${fmt((ev.remove / ev.base - 1) * 100, 1)} %)`;
    h.textContent = text;
    panel.appendChild(h);
    const strip = document.createElement("div");
    strip.className = "path";
    strip.dataset.method = method;
    path.neurons.forEach((neuron, layer) => {
      const box = document.createElement("div");
      box.className = "layer";
      const site = path.sites ? path.sites[layer] : layer;
      box.appendChild(heatmap(detail.thumb, path.maps[layer], 90, site));
      const label = document.createElement("div");
      const share = path.share[layer];
      const name = path.labels ? path.labels[layer].replace(" ", " · ") : `L${layer} · #${neuron}`;
      label.textContent = `${name} · a ${fmt(path.act[layer], 2)}` + (share === null ? "" : ` · ${fmt(share * 100, 0)} %`);
      label.title = "layer, unit (N: FFN neuron, H: attention head, whose value is its output's norm), clean value at the policy's tokens, share of the path's value sum";
      box.appendChild(label);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(0, Math.min(1, share || 0)) * 100}%`;
      box.appendChild(bar);
      strip.appendChild(box);
    });
    panel.appendChild(strip);
  });
}

function renderCards() {
  const holder = document.getElementById("cards");
  DATA.cards.forEach(card => {
    const div = document.createElement("div");
    div.className = "card";
    const h = document.createElement("h3");
    const head = card.name.includes(" H");
    h.textContent = card.name.replace(/^L(\d+) ([NH])(\d+)$/, (_, l, k, i) => `layer ${l}, ${k === "H" ? "head" : "neuron"} ${i}`);
    div.appendChild(h);
    const p = document.createElement("p");
    p.textContent = `chosen on ${card.count} ${DATA.method} paths (${fmt(card.share * 100, 1)} % of images); most by ` +
      card.classes.map(([name, count, share]) => `${name} ${count} (${fmt(share * 100, 0)} % of the class)`).join(", ");
    div.appendChild(p);
    const tops = document.createElement("div");
    tops.className = "tops";
    card.top.forEach(t => {
      const figure = document.createElement("figure");
      figure.appendChild(heatmap(DATA.thumbs[t.image], t.map, 96, card.site));
      if (head) {
        const pattern = heatmap(DATA.thumbs[t.image], t.attention, 96, card.site);
        pattern.classList.add("attention");
        pattern.title = t.attention ? `attention from the readout positions, ${fmt(t.attention.lo)} .. ${fmt(t.attention.hi)}`
          : `no attention pattern: ${DATA.attentionNote || "this head's attention is not over its own tokens (windowed, pooled or reduced)"}`;
        figure.appendChild(pattern);
      }
      const caption = document.createElement("figcaption");
      caption.textContent = `${t.label} · ${fmt(t.value, 2)}` + (head ? " · output norm | attention" : "");
      caption.title = t.image;
      figure.appendChild(caption);
      tops.appendChild(figure);
    });
    div.appendChild(tops);
    if (card.atlas) div.appendChild(atlasPart(card));
    if (card.images && card.images.length) {
      const uses = document.createElement("p");
      uses.className = "uses";
      uses.append(`images whose ${DATA.method} path uses it: `);
      card.images.forEach(image => {
        const a = document.createElement("a");
        a.href = `#image=${encodeURIComponent(image)}`;
        a.textContent = image.split("/").pop();
        a.title = image;
        uses.appendChild(a);
      });
      div.appendChild(uses);
    }
    div.dataset.search = [card.name, ...card.classes.map(c => c[0]), ...((card.atlas && card.atlas.labels) || []).map(l => l[0])].join(" ").toLowerCase();
    holder.appendChild(div);
  });
  const search = document.getElementById("card-search");
  const count = document.getElementById("card-count");
  const filter = () => {
    const words = search.value.toLowerCase().trim();
    let shown = 0;
    holder.querySelectorAll(".card").forEach(div => {
      div.hidden = words !== "" && !div.dataset.search.includes(words);
      shown += div.hidden ? 0 : 1;
    });
    count.textContent = `${shown} of ${DATA.cards.length} cards`;
  };
  search.oninput = filter;
  filter();
}

// A unit's atlas over a larger image set: top and bottom images with the peak patch boxed,
// a histogram of its values, its statistics and (zero-shot models) its text labels.
function atlasPart(card) {
  const a = card.atlas, part = document.createElement("div");
  part.className = "atlas";
  const h = document.createElement("h4");
  h.textContent = `${DATA.atlasNote}: mean ${fmt(a.stats.mean, 3)}, active on ${fmt(a.stats.active * 100, 0)} % of images`;
  part.appendChild(h);
  [["top", a.top], ["bottom", a.bottom]].forEach(([name, list]) => {
    const row = document.createElement("div");
    row.className = "tops";
    row.dataset.end = name;
    list.forEach(t => {
      const figure = document.createElement("figure");
      figure.appendChild(boxed(DATA.atlasThumbs[t.image], t.peak, card.site, 72));
      const caption = document.createElement("figcaption");
      caption.textContent = `${name} · ${fmt(t.value, 2)}`;
      caption.title = t.image;
      figure.appendChild(caption);
      row.appendChild(figure);
    });
    part.appendChild(row);
  });
  part.appendChild(histogram(a.histogram[0], a.histogram[1]));
  if (a.labels && a.labels.length) {
    const p = document.createElement("p");
    p.className = "labels";
    p.textContent = "text labels (direct effect on the image embedding only): " + a.labels.map(([w, v]) => `${w} ${fmt(v, 3)}`).join(", ");
    part.appendChild(p);
  }
  return part;
}

function boxed(thumb, peak, site, size) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const context = canvas.getContext("2d");
  const picture = new Image();
  picture.onload = () => {
    context.drawImage(picture, 0, 0, size, size);
    const layout = DATA.layouts && DATA.layouts[site];
    if (!peak || !layout || layout.kind !== "grid") return;
    const w = size / layout.width, h = size / layout.height;
    context.strokeStyle = "#ff2d2d";
    context.lineWidth = 2;
    context.strokeRect(peak[1] * w + 1, peak[0] * h + 1, w - 2, h - 2);
  };
  picture.src = thumb;
  canvas.title = peak ? `peak at row ${peak[0]}, column ${peak[1]}` : "no peak patch (no token layout)";
  return canvas;
}

function histogram(counts, edges) {
  const canvas = document.createElement("canvas");
  canvas.width = 360; canvas.height = 60;
  canvas.className = "hist";
  const context = canvas.getContext("2d");
  const top = Math.max(1, ...counts), w = canvas.width / counts.length;
  counts.forEach((c, k) => {
    context.fillStyle = "#4a78c2";
    context.fillRect(k * w + 1, canvas.height - 12 - (c / top) * (canvas.height - 14), w - 2, (c / top) * (canvas.height - 14));
  });
  context.fillStyle = "#556";
  context.font = "10px sans-serif";
  context.fillText(fmt(edges[0], 2), 0, canvas.height - 1);
  const last = fmt(edges[edges.length - 1], 2);
  context.fillText(last, canvas.width - context.measureText(last).width, canvas.height - 1);
  canvas.title = "values on the atlas's sampled images";
  return canvas;
}

function render() { renderHead(); renderTable(); }

// One section at a time: #overview, #explorer (also #image=ID), #neurons.
function showSection() {
  const hash = location.hash.replace(/^#/, "");
  const name = hash.startsWith("image=") ? "explorer" : (["overview", "explorer", "neurons"].includes(hash) ? hash : "overview");
  document.querySelectorAll("main > section").forEach(s => { s.hidden = s.id !== name; });
  document.querySelectorAll("header nav a").forEach(a => a.classList.toggle("active", a.getAttribute("href") === `#${name}`));
  window.scrollTo(0, 0);
}

function init() {
  const select_ = document.getElementById("class-filter");
  DATA.classes.forEach((name, k) => {
    const option = document.createElement("option");
    option.value = k; option.textContent = name;
    select_.appendChild(option);
  });
  select_.onchange = () => { state.filter = select_.value; state.page = 0; renderTable(); };
  document.getElementById("search").oninput = e => { state.search = e.target.value.toLowerCase(); state.page = 0; renderTable(); };
  document.getElementById("prev").onclick = () => { state.page = Math.max(0, state.page - 1); renderTable(); };
  document.getElementById("next").onclick = () => { state.page += 1; renderTable(); };
  const c = DATA.capped;
  document.getElementById("explorer-note").textContent =
    `${c.images} images; thumbnails, activations and heatmaps (each path neuron's activation over the patch grid) for the first ${c.details}.`;
  document.getElementById("neurons-note").textContent =
    `The ${c.cards} most chosen of the ${c.neurons} units on ${DATA.method} paths, each with the run's images that activate it most (at the policy's tokens); ${DATA.atlasNote || "no atlas"}.`;
  render();
  renderCards();
  window.addEventListener("hashchange", showSection);
  showSection();
  const match = location.hash.match(/^#image=(.+)$/);
  if (match && ROWS.id.includes(decodeURIComponent(match[1]))) select(decodeURIComponent(match[1]));
}

init();
