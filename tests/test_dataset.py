"""The dataset store: labels, samples, manifest, crash leftovers and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time

import cv2
import numpy as np
import pytest

from expr_core.data.store import DEFAULT_LABELS, MAX_LABEL_LEN, DatasetStore, NewSample, Sample, validate_label
from expr_core.errors import DatasetError, InvalidLabel


def crop(value: int = 128, size: int = 48) -> np.ndarray:
    image = np.full((size, size, 3), value, np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 4, (255 - value, 40, 200), -1)
    return image


def new(label: str = "happy", source: str = "webcam", session: str = "s1", **kw) -> NewSample:
    return NewSample(image=crop(), label=label, source=source, session=session, **kw)


def files(store: DatasetStore) -> tuple[bytes | None, bytes | None]:
    read = lambda p: p.read_bytes() if p.exists() else None  # noqa: E731
    return read(store.root / "labels.json"), read(store.root / "manifest.jsonl")


# -- labels -----------------------------------------------------------------------------------------
def test_default_labels_on_a_fresh_workspace_write_nothing(store, settings):
    assert store.labels() == ["happy", "sad"] == list(DEFAULT_LABELS)
    assert store.stats() == {"happy": 0, "sad": 0}
    assert store.samples() == []
    assert not settings.workspace.exists()


def test_add_rename_delete_labels(store):
    assert store.add_label("  surprised ") == "surprised"
    assert store.labels() == ["happy", "sad", "surprised"]
    assert json.loads((store.root / "labels.json").read_text()) == ["happy", "sad", "surprised"]
    assert store.rename_label("surprised", "amazed") == "amazed"
    assert store.labels() == ["happy", "sad", "amazed"]  # order kept
    assert store.delete_label("amazed") == 0
    assert store.labels() == ["happy", "sad"]
    assert DatasetStore(store.root.parent).labels() == ["happy", "sad"]  # persisted


def test_rename_to_a_different_case_of_itself(store):
    assert store.rename_label("happy", "Happy") == "Happy"
    assert store.labels() == ["Happy", "sad"]


BAD_LABELS = {
    "": "cannot be empty",
    "   ": "cannot be empty",
    "x" * (MAX_LABEL_LEN + 1): f"at most {MAX_LABEL_LEN} characters",
    "../x": "is not allowed",
    "/abs": "is not allowed",
    "a/b": "is not allowed",
    "a\\b": "is not allowed",
    ".": "is not allowed",
    "..": "is not allowed",
    "con": "reserved name",
    "NUL": "reserved name",
    "com1": "reserved name",
    "images": "reserved name",
    "HAPPY": "already a label called 'HAPPY'",
    " Sad ": "already a label called 'Sad'",
    "bad\x00name": "is not allowed",
    "new\nline": "is not allowed",
    "tab\there": "is not allowed",
    "-dash": "is not allowed",
    "_under": "is not allowed",
    "a:b": "is not allowed",
    "a*b?": "is not allowed",
    "\u0301accent": "is not allowed",  # a lone combining mark cannot start a label
    "zero\u200bwidth": "contains invisible characters",
}


@pytest.mark.parametrize("name,message", list(BAD_LABELS.items()), ids=[repr(k)[:20] for k in BAD_LABELS])
def test_bad_label_names_are_refused_and_nothing_changes(store, tree_snapshot, name, message):
    store.add_label("neutral")
    store.add_samples([new(), new("neutral")])
    before = tree_snapshot(store.root)
    with pytest.raises(InvalidLabel, match=message.replace("?", r"\?")) as info:
        store.add_label(name)
    assert str(info.value)  # a message the page and the CLI can show
    with pytest.raises(InvalidLabel, match=message.replace("?", r"\?")):
        store.rename_label("neutral", name)
    assert tree_snapshot(store.root) == before


@pytest.mark.parametrize("name", ["../x", "", "con", "HAPPY"])
def test_bad_label_on_a_fresh_workspace_creates_no_folder(store, settings, name):
    with pytest.raises(InvalidLabel):
        store.add_label(name)
    with pytest.raises(DatasetError):
        store.rename_label("nope", "fine")
    with pytest.raises(DatasetError):
        store.delete_label("nope")
    assert not settings.workspace.exists()


@pytest.mark.parametrize(
    "name", ["fröhlich", "笑顔", "खुश", "ยิ้ม", "سعيد", "Überrascht 2", "very-happy_1", "x" * MAX_LABEL_LEN]
)
def test_unicode_and_plain_labels_are_accepted(store, name):
    assert store.add_label(name) == name
    store.add_samples([new(label=name)])
    assert store.stats()[name] == 1


def test_labels_are_normalised_to_nfc(store):
    decomposed = "fro\u0308hlich"  # as macOS writes file names
    assert store.add_label(decomposed) == "fröhlich"
    with pytest.raises(InvalidLabel, match="already"):
        store.add_label("FRÖHLICH")


def test_validate_label_is_pure():
    assert validate_label(" ok ", ["other"]) == "ok"
    with pytest.raises(InvalidLabel, match="must be text"):
        validate_label(None)  # type: ignore[arg-type]


def test_rename_errors(store):
    with pytest.raises(DatasetError, match="There is no label 'nope'; the labels are happy, sad"):
        store.rename_label("nope", "x")
    with pytest.raises(InvalidLabel, match="already a label called 'Sad'"):
        store.rename_label("happy", "Sad")


def test_delete_label_with_samples_refuses_unless_asked(store, tree_snapshot):
    kept = store.add_samples([new("sad")])
    store.add_samples([new("happy"), new("happy")])
    before = tree_snapshot(store.root)
    with pytest.raises(DatasetError, match="'happy' still has 2 samples"):
        store.delete_label("happy")
    assert tree_snapshot(store.root) == before
    assert store.delete_label("happy", delete_samples=True) == 2
    assert store.labels() == ["sad"]
    assert store.samples() == kept
    assert sorted(p.stem for p in store.images_dir.iterdir()) == [kept[0].id]


def test_rename_keeps_samples_and_files(store):
    added = store.add_samples([new("happy"), new("happy"), new("sad")])
    image_bytes = {s.id: store.image_path(s).read_bytes() for s in added}
    store.rename_label("happy", "joy")
    assert store.stats() == {"joy": 2, "sad": 1}
    after = store.samples()
    assert [s.id for s in after] == [s.id for s in added]
    assert [s.label for s in after] == ["joy", "joy", "sad"]
    assert {s.id: store.image_path(s).read_bytes() for s in after} == image_bytes
    assert [s.created for s in after] == [s.created for s in added]


# -- samples ----------------------------------------------------------------------------------------
def test_add_samples_records_everything(store):
    before = time.time()
    [sample] = store.add_samples(
        [new("sad", "upload", "sess-42", score=0.912345678, captured_by="ana", subject="p1", origin="me.jpg")]
    )
    assert sample.label == "sad" and sample.source == "upload" and sample.session == "sess-42"
    assert sample.score == 0.9123 and sample.captured_by == "ana" and sample.subject == "p1"
    assert before - 1 <= sample.created <= time.time() + 1
    line = json.loads((store.root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert line == {
        "id": sample.id,
        "label": "sad",
        "source": "upload",
        "session": "sess-42",
        "created": sample.created,
        "score": 0.9123,
        "captured_by": "ana",
        "subject": "p1",
        "origin": "me.jpg",
        "person": None,
    }
    image = store.load_image(sample)
    assert image.shape == (48, 48, 3)
    assert np.abs(image.astype(int) - crop()).mean() < 3
    assert [p.name for p in store.images_dir.iterdir()] == [f"{sample.id}.jpg"]


def test_sample_ids_are_unique_and_files_named_by_id(store):
    added = store.add_samples([new() for _ in range(50)])
    assert len({s.id for s in added}) == 50
    assert {p.stem for p in store.images_dir.glob("*.jpg")} == {s.id for s in added}


def test_add_samples_validation_writes_nothing(store, tree_snapshot):
    store.add_samples([new()])
    before = tree_snapshot(store.root)
    with pytest.raises(DatasetError, match="There is no label 'angry'"):
        store.add_samples([new("happy"), new("angry")])
    with pytest.raises(DatasetError, match="Unknown sample source 'telepathy'"):
        store.add_samples([new("happy", source="telepathy")])
    assert tree_snapshot(store.root) == before
    assert store.add_samples([]) == []


def test_delete_samples(store):
    a, b, c = store.add_samples([new(), new("sad"), new()])
    assert store.delete_samples([a.id, c.id, "no-such-id"]) == 2
    assert store.samples() == [b]
    assert not store.image_path(a).exists() and store.image_path(b).exists()
    assert store.delete_samples([a.id]) == 0


def test_stats_and_samples_per_label(store):
    store.add_label("neutral")
    store.add_samples([new("happy"), new("happy"), new("sad")])
    assert store.stats() == {"happy": 2, "sad": 1, "neutral": 0}
    assert [s.label for s in store.samples("happy")] == ["happy", "happy"]
    assert store.samples("neutral") == []


def test_delete_all(store):
    store.add_label("neutral")
    store.add_samples([new("neutral")])
    store.delete_all()
    assert store.labels() == ["happy", "sad"] and store.samples() == []
    assert list(store.images_dir.iterdir()) == []


def test_sample_group_for_validation_splits():
    base = {"id": "i", "label": "happy", "created": 0.0, "session": "s"}
    assert Sample(**base, source="import", subject="bob").group == "subject:bob"
    assert Sample(**base, source="import", origin="a.jpg").group == "origin:a.jpg"
    assert Sample(**base, source="webcam", origin="a.jpg").group == "session:s"


@pytest.mark.parametrize(
    "fields, who",
    [
        ({"captured_by": "ana"}, "ana"),
        ({"captured_by": " ana "}, "ana"),
        ({"captured_by": "anonymous"}, None),
        ({"captured_by": "Anonymous"}, None),
        ({"captured_by": "cli"}, None),
        ({"captured_by": ""}, None),
        ({}, None),
        ({"captured_by": "ana", "subject": "S005"}, "S005"),
        ({"captured_by": "cli", "subject": "S005"}, "S005"),
        ({"captured_by": "ana", "subject": "S005", "person": "bo"}, "bo"),
        ({"captured_by": "anonymous", "person": "bo"}, "bo"),
    ],
)
def test_the_person_of_a_sample(fields, who):
    sample = Sample(id="i", label="happy", source="webcam", session="s", created=0.0, **fields)
    assert sample.who == who
    assert sample.group == ("subject:S005" if "subject" in fields else "session:s")  # the person never regroups


def test_set_person_overrides_and_clears_and_survives_a_rename(store):
    a, b, c = store.add_samples([new(captured_by="ana"), new(captured_by="anonymous"), new("sad")])
    assert store.set_person([a.id, b.id, "no-such-id"], "  Bo ") == 2
    assert [s.who for s in store.samples()] == ["Bo", "Bo", None]
    assert store.set_person([a.id, b.id], "Bo") == 0  # nothing changed, nothing rewritten
    store.rename_label("happy", "joy")
    assert [(s.label, s.person) for s in store.samples()] == [("joy", "Bo"), ("joy", "Bo"), ("sad", None)]
    assert store.set_person([a.id], "") == 1
    assert [s.who for s in store.samples()] == ["ana", "Bo", None]
    assert store.set_person([b.id], None) == 1 and store.samples()[1].person is None
    assert [s.id for s in store.samples()] == [a.id, b.id, c.id]


def test_set_person_refuses_an_overlong_name_and_writes_nothing(store, tree_snapshot):
    [sample] = store.add_samples([new()])
    before = tree_snapshot(store.root)
    with pytest.raises(DatasetError, match="at most 80 characters"):
        store.set_person([sample.id], "x" * 81)
    assert tree_snapshot(store.root) == before


def test_manifest_lines_from_before_the_person_field_still_load(store):
    [sample] = store.add_samples([new(captured_by="ana")])
    line = json.loads((store.root / "manifest.jsonl").read_text(encoding="utf-8"))
    del line["person"]
    (store.root / "manifest.jsonl").write_text(json.dumps({**line, "id": "old"}) + "\n" + json.dumps(line) + "\n")
    (store.images_dir / "old.jpg").write_bytes(store.image_path(sample).read_bytes())
    old, current = store.samples()
    assert (old.id, old.person, old.who) == ("old", None, "ana") and current == sample
    assert store.set_person(["old"], "Cy") == 1
    assert [s.who for s in store.samples()] == ["Cy", "ana"]


# -- crash leftovers --------------------------------------------------------------------------------
def test_torn_last_manifest_line_is_skipped_and_does_not_eat_the_next_sample(store):
    first = store.add_samples([new()])
    with open(store.root / "manifest.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "torn", "label": "hap')  # the process died mid-append
    assert store.samples() == first
    second = store.add_samples([new("sad")])
    assert store.samples() == first + second
    assert store.stats() == {"happy": 1, "sad": 1}


def test_a_last_line_torn_inside_a_multibyte_character_is_skipped_too(store):
    """A crash mid-append can cut a label like 笑顔 between the bytes of one character (issue 12, B3)."""
    store.add_label("笑顔")
    first = store.add_samples([new("笑顔")])
    line = (store.root / "manifest.jsonl").read_bytes()
    cut = line.index("顔".encode()) + 1  # one byte into the three of 顔
    with open(store.root / "manifest.jsonl", "ab") as handle:
        handle.write(line[:cut])
    assert store.samples() == first and store.stats()["笑顔"] == 1
    second = store.add_samples([new("笑顔")])
    assert store.samples() == first + second and store.stats()["笑顔"] == 2


def test_orphan_image_is_not_listed(store):
    added = store.add_samples([new()])
    cv2.imwrite(str(store.images_dir / "orphan.jpg"), crop())  # image written, manifest line never appended
    (store.images_dir / ".tmp-abc123").write_bytes(b"half a jpeg")  # temp file of an interrupted write
    assert store.samples() == added and store.stats()["happy"] == 1


def test_manifest_line_without_image_is_not_listed(store):
    a, b = store.add_samples([new(), new()])
    store.image_path(a).unlink()
    assert store.samples() == [b]


def test_unknown_manifest_fields_are_skipped_not_fatal(store):
    added = store.add_samples([new()])
    with open(store.root / "manifest.jsonl", "a", encoding="utf-8") as handle:
        handle.write('"just a string"\n{"id": "x", "unexpected": 1}\n')
    assert store.samples() == added


def test_unreadable_image_file(store):
    [sample] = store.add_samples([new()])
    store.image_path(sample).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=f"Sample {sample.id} \\(happy\\) has an unreadable image file"):
        store.load_image(sample)


# -- concurrent writers -----------------------------------------------------------------------------
def test_concurrent_threads_lose_nothing(settings):
    """Writers add while others rewrite the manifest (deletes) and labels; every add must survive."""
    seed = DatasetStore(settings.workspace)
    doomed = seed.add_samples([new("sad") for _ in range(20)])
    errors: list[BaseException] = []
    added: list[Sample] = []

    def guard(fn):
        def run():
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    def writer(n):
        store = DatasetStore(settings.workspace)  # own instance: only the file lock protects it
        for i in range(15):
            added.extend(store.add_samples([new("happy", session=f"w{n}-{i}")]))

    def deleter():
        store = DatasetStore(settings.workspace)
        for sample in doomed:
            store.delete_samples([sample.id])

    def labeller():
        store = DatasetStore(settings.workspace)
        for i in range(10):
            store.add_label(f"extra {i}")

    threads = [threading.Thread(target=guard(lambda n=n: writer(n))) for n in range(4)]
    threads += [threading.Thread(target=guard(deleter)), threading.Thread(target=guard(labeller))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = DatasetStore(settings.workspace)
    assert len(added) == 60
    assert {s.id for s in final.samples()} == {s.id for s in added}
    assert final.labels() == ["happy", "sad", *(f"extra {i}" for i in range(10))]
    assert final.stats()["happy"] == 60 and final.stats()["sad"] == 0


def _process_writer(workspace: str, tag: str, count: int, start) -> None:
    start.wait()
    store = DatasetStore(workspace)
    for i in range(count):
        store.add_samples([NewSample(image=crop(i % 250), label="happy", source="import", session=f"{tag}-{i}")])
    store.add_label(f"from {tag}")


def test_two_processes_adding_at_once_lose_nothing(settings):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_process_writer, args=(str(settings.workspace), tag, 25, start)) for tag in "ab"]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    store = DatasetStore(settings.workspace)
    sessions = sorted(s.session for s in store.samples())
    assert sessions == sorted(f"{tag}-{i}" for tag in "ab" for i in range(25))
    assert sorted(store.labels()) == ["from a", "from b", "happy", "sad"]
    assert len(list(store.images_dir.glob("*.jpg"))) == 50
    assert not list(store.images_dir.glob(".tmp-*"))
