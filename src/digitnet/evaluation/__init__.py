"""The evaluation room: metrics dicts from probabilities and from a run (`evaluate`), run folders
as a collection (`runs`), the report files (`report`, `plots`) and the probe set of images that
hold no digit (`nondigits`). Nothing is imported here: `runs` stays free of torch."""
