"""CSV backlogs: same datasource, status written back without disturbing anything else."""

from __future__ import annotations

from test_rebuild_rules import FAKE

CSV = (
    'id,title,summary,keyMoments,status,completedAt,error,producer note\r\n'
    'noah-s-ark,Noah\'s Ark,"Noah builds an ark to save his family, and the animals.",'
    'building the ark|animals entering two by two|the rainbow promise,pending,,,"check, the dove"\r\n'
    'jonah-and-the-whale,Jonah and the Whale,Jonah runs from God and is swallowed by a great fish.,'
    'the storm|the great fish|Nineveh,completed,2026-01-02T03:04:05Z,,published\r\n'
    'david-and-goliath,David and Goliath,A shepherd boy defeats a giant warrior with a sling.,'
    'the giant|the stone|the fall,pending,,,\r\n'
)


def _use_csv(project, text=CSV):
    project.backlog_path().unlink(missing_ok=True)
    path = project.root / "backlogs" / "comic-books-standard.csv"
    path.write_bytes(text.encode())
    return path


def test_csv_build_writes_back_only_status_fields(project):
    path = _use_csv(project)
    run = project.doit(env=FAKE)
    assert run.rc == 0, run.out + run.err
    assert {c["story"] for c in run.calls} == {"noah-s-ark", "david-and-goliath"}  # not the completed one
    before = CSV.split("\r\n")
    after = path.read_bytes().decode().split("\r\n")
    assert len(after) == len(before)
    assert after[0] == before[0] and after[2] == before[2] and after[-1] == before[-1]
    for i in (1, 3):
        old, new = before[i].split(","), after[i].split(",")
        assert new[0] == old[0]
        assert ",completed,20" in after[i]
        assert after[i].replace(",completed,", ",pending,").split(",pending,")[0] == before[i].split(",pending,")[0]
        assert after[i].rsplit(",", 1)[1] == before[i].rsplit(",", 1)[1]  # producer note kept
    # the extra column reached the story input: it is part of the step's dependency
    assert (project.story_dir("noah-s-ark") / "bundle" / "story-data.json").exists()


def test_malformed_csv_row_names_the_line(project):
    bad = CSV.replace("david-and-goliath,David and Goliath,", "david-and-goliath,", 1)
    path = _use_csv(project, bad)
    run = project.doit(env=FAKE)
    assert run.rc != 0
    assert "comic-books-standard.csv" in run.err and "line 4" in run.err
    assert "Traceback" not in run.err
    assert path.read_bytes() == bad.encode()
    assert not (project.root / "build" / "comic-books-standard").exists()


def test_csv_missing_column_and_bad_id(project):
    _use_csv(project, "id,title,summary,status\nx,T,S,pending\n")
    run = project.doit(env=FAKE)
    assert run.rc != 0 and "keyMoments" in run.err
    _use_csv(project, CSV.replace("david-and-goliath,", "../x,", 1))
    run = project.doit(env=FAKE)
    assert run.rc != 0 and "line 4" in run.err and "not a slug" in run.err
