"""The README's main job: `doit` over the whole shipped backlog, offline, gives 16 valid bundles."""

from __future__ import annotations

import json

import jsonschema
from PIL import Image

from conftest import make_project

# story-data.json: exactly the seed spec's StoryDataJson (no other keys)
STORY_DATA_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["storyId", "title", "thumbnailFile", "totalPages", "pages"],
    "properties": {
        "storyId": {"type": "string"}, "title": {"type": "string"},
        "thumbnailFile": {"type": "string"}, "totalPages": {"type": "integer"},
        "pages": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["pageNumber", "imageFile", "narration"],
            "properties": {"pageNumber": {"type": "integer"}, "imageFile": {"type": "string"},
                           "narration": {"type": "string", "minLength": 1}}}},
    },
}


def test_whole_backlog_builds_offline(tmp_path):
    project = make_project(tmp_path, small_images=False)
    ids = [it["id"] for it in project.backlog()["items"]]
    assert len(ids) == 16
    config = json.loads(project.config_path().read_text())
    lo, hi = config["settings"]["pageCount"]["min"], config["settings"]["pageCount"]["max"]

    run = project.doit()
    assert run.rc == 0, run.out + run.err
    for sid in ids:
        bundle = project.story_dir(sid) / "bundle"
        data = json.loads((bundle / "story-data.json").read_text())
        jsonschema.validate(data, STORY_DATA_SCHEMA)
        assert data["storyId"] == sid
        assert lo <= data["totalPages"] <= hi
        assert data["totalPages"] == len(data["pages"])
        assert [p["pageNumber"] for p in data["pages"]] == list(range(1, data["totalPages"] + 1))
        expected = {f"{i}.jpg" for i in range(1, data["totalPages"] + 1)}
        assert {p["imageFile"] for p in data["pages"]} == expected
        assert {p.name for p in bundle.iterdir()} == expected | {"thumbnail.jpg", "story-data.json"}
        for name in expected | {"thumbnail.jpg"}:
            with Image.open(bundle / name) as img:
                assert img.format == "JPEG" and img.width > 0
        # a cast with a sheet per character, and every page drawn with its cast's sheets
        sdir = project.story_dir(sid)
        cast = json.loads((sdir / "cast.json").read_text())["characters"]
        assert cast and len({c["id"] for c in cast}) == len(cast)
        for c in cast:
            assert (sdir / "cast" / f"{c['id']}.txt").is_file()
            with Image.open(sdir / "cast" / f"{c['id']}.jpg") as img:
                assert img.format == "JPEG" and img.width > img.height  # a 4:3 sheet
        plan = json.loads((sdir / "pages.json").read_text())
        cast_ids = {c["id"] for c in cast}
        for page in plan["pages"]:
            assert page["panels"] and all(set(p["cast"]) <= cast_ids for p in page["panels"])
    # the library's characters are shared: Moses of two stories is the library's Moses
    for sid in ("baby-moses", "parting-the-red-sea"):
        cast = json.loads((project.story_dir(sid) / "cast.json").read_text())["characters"]
        assert {"id": "moses", "name": "Moses", "kind": "person", "library": True} in cast
    # offline drafts are never published
    assert {it["status"] for it in project.backlog()["items"]} == {"pending"}
    again = project.doit()
    assert again.rc == 0 and again.calls == []
