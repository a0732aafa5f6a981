"""Output for people: tables, figures and text summaries (no computation of results)."""
