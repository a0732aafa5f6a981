"""A reference folder of held-out images: links to every image of an image folder that a find
run did not use (its class sub-folders kept), for ``evaluate --reference``.

    python benchmarks/heldout_images.py runs/s12-dev400 ../shared/data/imagenet20-dev \
        runs/dev-heldout
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neuronpath.io.images import IMAGE_EXTENSIONS
from neuronpath.io.store import read_records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a find run")
    parser.add_argument("data", help="the image folder it was made on")
    parser.add_argument("out", help="the folder of links to write")
    args = parser.parse_args()
    used = {r["image"] for r in read_records(args.run)}
    data, out = Path(args.data).resolve(), Path(args.out)
    linked = 0
    for path in sorted(data.rglob("*")):
        image = path.relative_to(data).as_posix()
        if path.suffix.lower() in IMAGE_EXTENSIONS and image not in used:
            target = out / image
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(path)
            linked += 1
    print(f"{linked} held-out images of {data} linked into {out} ({len(used)} used by the run)")


if __name__ == "__main__":
    main()
