"""de-en data, `train` / `evaluate` / `quickstart` on tiny data, and the shipped pretrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qrnn_deploy.cli import main
from qrnn_deploy.data import dictionary as dic
from qrnn_deploy.data.dictionary import ParseStats, parse_lines, split_of, split_pairs
from qrnn_deploy.errors import DataError

# Written for this test (not taken from the dictionary), in the dictionary's format.
EXCERPT = """\
# Version :: test
Haus {n} [arch.] | Häuser {pl} :: house | houses
Apfel {m}; Paradiesapfel {m} (Tomate) [bot.] :: apple; love apple [archaic]
Fahrrad {n}; Rad {n}; Velo {n} [Schw.] :: bicycle; bike
Tisch {m} | Tische {pl} :: table
etw. (sehr (schnell)) erledigen {vt} <erledigen> :: to get sth. done (quickly)
kaputt (ugs. :: broken
Das ist’s. :: That’s it.
Geld ausgeben | ... ausgeben :: to spend money | to spend ...
der ~ Weg :: the ~ way
Es ist nicht / Es ist kein Problem. :: It is not a problem.
Katze {f} :: cat
Katze {f} :: cat
"""


def test_parser_rules():
    st = ParseStats()
    pairs = parse_lines(EXCERPT.splitlines(), st)
    assert ("Haus", "house") in pairs and ("Häuser", "houses") in pairs  # sub-entries aligned by |
    # same number of synonyms: paired by position; annotations {} [] () removed
    assert ("Apfel", "apple") in pairs and ("Paradiesapfel", "love apple") in pairs
    assert ("Apfel", "love apple") not in pairs
    # different numbers: every German synonym gets the first (primary) English one
    assert [p for p in pairs if p[1] in ("bicycle", "bike")] == [("Fahrrad", "bicycle"), ("Rad", "bicycle"),
                                                                 ("Velo", "bicycle")]
    assert st.misaligned == 1 and not any(d.startswith("Tisch") for d, _ in pairs)  # 2 vs 1 sub-entries
    assert ("etw. erledigen", "to get sth. done") in pairs  # nested () and <> removed
    assert st.unbalanced == 1 and not any(d.startswith("kaputt") for d, _ in pairs)
    assert ("Das ist's.", "That's it.") in pairs  # typographic apostrophe normalised
    assert ("Geld ausgeben", "to spend money") in pairs
    assert not any("..." in d or "~" in d or " / " in d for d, _ in pairs)
    assert pairs.count(("Katze", "cat")) == 1 and st.duplicates == 1
    assert st.comments == 1
    assert all(d == d.strip() and "  " not in d and e == e.strip() for d, e in pairs)


def test_split_is_stable_and_grouped_by_german():
    pairs = [(f"Wort{i % 50}", f"word {i}") for i in range(500)]
    a, b = split_pairs(pairs), split_pairs(list(pairs))
    assert a == b
    where = {}
    for name, ps in a.items():
        for d, _ in ps:
            assert where.setdefault(d, name) == name  # one German string, one split
    # Pinned: changing the split (seed, hash, fractions) must be a deliberate act.
    assert [split_of(w) for w in ("Haus", "Katze", "Guten Morgen.")] == ["train", "train", "train"]
    many = split_pairs([(f"x{i}", "y") for i in range(20000)])
    assert 250 < len(many["test"]) < 550 and 250 < len(many["valid"]) < 550


def test_missing_dictionary_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dic, "DEFAULT_PATH", tmp_path / "nope")
    with pytest.raises(DataError, match="apt-get install trans-de-en"):
        dic.load_splits()
    for argv in (["train", "--steps", "1", "--out", str(tmp_path / "r")],
                 ["quickstart", "--train-minutes", "0.01", "--out", str(tmp_path / "q")]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "apt-get install trans-de-en" in err


@pytest.fixture(scope="module")
def tiny_dict(tmp_path_factory) -> Path:
    """A synthetic dictionary: made-up words with a learnable letter mapping."""
    p = tmp_path_factory.mktemp("dict") / "de-en.txt"
    lines = []
    for i in range(600):
        w = "".join("abcdefghij"[int(c)] for c in str(i * 7 + 11))
        lines.append(f"{w.capitalize()}wort {{n}} | {w}worte {{pl}} :: {w} word | {w} words")
    p.write_text("# test\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return p


TINY = ["--hidden", "16", "--layers", "2", "--max-tokens", "400", "--valid-every", "100000", "--no-progress",
        "--threads", "1"]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_train_resume_evaluate(tiny_dict, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    main_ok = lambda argv: _run_ok(argv)
    main_ok(["train", "--steps", "4", "--out", str(straight), "--data-file", str(tiny_dict), *TINY])
    main_ok(["train", "--steps", "2", "--out", str(split), "--data-file", str(tiny_dict), *TINY])
    st = json.loads((split / "state.json").read_text())
    assert st["step"] == 2 and st["pos"] == 2
    main_ok(["train", "--steps", "2", "--resume", "--out", str(split), "--data-file", str(tiny_dict), *TINY])
    assert json.loads((split / "state.json").read_text())["step"] == 4
    # Resuming gives exactly the weights of an uninterrupted run (same batches, Adam moments, RNG).
    a, b = _weights(straight / "last.safetensors"), _weights(split / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(l) for l in (split / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(r["valid_loss"] > 0 for r in log)

    # A resumed run keeps its settings: changing its size or seed is refused, not silently ignored,
    # and the run is left as it was; the validation interval may change.
    for option, value, saved in (("--hidden", "32", "16"), ("--layers", "3", "2"), ("--seed", "7", "1")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["train", "--steps", "1", "--resume", "--out", str(split), "--data-file", str(tiny_dict),
                  option, value, "--no-progress", "--threads", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{option} {value}" in err and f"made with {saved}" in err, err
    assert json.loads((split / "state.json").read_text())["step"] == 4
    assert all(torch.equal(b[k], v) for k, v in _weights(split / "last.safetensors").items())
    main_ok(["train", "--steps", "1", "--resume", "--out", str(split), "--data-file", str(tiny_dict),
             "--valid-every", "50000", "--hidden", "16", "--no-progress", "--threads", "1"])
    from qrnn_deploy.nn import read_checkpoint_metadata

    cfg = read_checkpoint_metadata(split / "last.safetensors")["extra"]["train_config"]
    assert cfg["valid_every_s"] == 50000 and cfg["hidden_size"] == 16

    capsys.readouterr()
    main_ok(["evaluate", str(split / "best.safetensors"), "--data-file", str(tiny_dict), "--limit", "6",
             "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "copy source" in out and "chrF" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["pairs"] == 6 and 0 <= s["chrf"] <= 100 and s["copy_chrf"] > 0


def _run_ok(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code in (0, None), argv


def test_resume_without_state_is_a_clear_error(tiny_dict, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--steps", "1", "--resume", "--out", str(tmp_path / "none"), "--data-file", str(tiny_dict)])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


def test_batched_greedy_matches_greedy_decode():
    from qrnn_deploy.nn import QRNNSeq2Seq
    from qrnn_deploy.nn.batching import greedy_decode_batch

    torch.manual_seed(0)
    m = QRNNSeq2Seq(12, 12, embed_size=8, hidden_size=16, num_layers=2).eval()
    gen = torch.Generator().manual_seed(1)
    srcs = [torch.randint(4, 12, (n,), generator=gen).tolist() for n in (1, 3, 7, 7, 12, 5, 2)]
    want = [m.greedy_decode(s, max_len=15) for s in srcs]
    assert greedy_decode_batch(m, srcs, max_len=15, batch_size=4) == want
    # per-row limits: rows of one batch stop at different steps
    assert greedy_decode_batch(m, srcs, max_len=lambda n: n) == [m.greedy_decode(s, max_len=len(s)) for s in srcs]


def test_quickstart_reduced(tiny_dict, tmp_path, capsys):
    out = tmp_path / "qs"
    _run_ok(["quickstart", "--out", str(out), "--train-minutes", "0.02", "--data-file", str(tiny_dict),
             "--hidden", "16", "--layers", "2", "--limit", "8", "--examples", "2", "--threads", "1"])
    text = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "qrnn-deploy translate", "qrnn-deploy serve"):
        assert step in text
    s = json.loads((out / "quickstart.json").read_text())
    assert (out / "bundle" / "manifest.json").is_file() and s["verification"]
    assert s["scores"]["pairs"] == 8 and len(s["examples"]) == 2
    # `evaluate` on the bundle (runtime) and on the checkpoint (PyTorch) agree with quickstart's scores.
    for target in (out / "bundle", out / "train" / "best.safetensors"):
        _run_ok(["evaluate", str(target), "--data-file", str(tiny_dict), "--limit", "8", "--json", str(tmp_path / "e.json")])
        e = json.loads((tmp_path / "e.json").read_text())
        assert (e["chrf"], e["bleu"], e["copy_chrf"]) == (s["scores"]["chrf"], s["scores"]["bleu"], s["scores"]["copy_chrf"])


def test_quickstart_falls_back_to_portable_without_the_custom_op_library(tiny_dict, tmp_path, capsys, monkeypatch):
    """Without libqrnn_ort.so (a wheel install before `qrnn-deploy build-plugins`, a machine without
    a compiler) export still succeeds (verified on onnx.reference), so the quickstart went on with
    a custom-op bundle and failed when the runtime loaded it (exit 2)."""
    from qrnn_deploy import _native

    monkeypatch.delenv("QRNN_ORT_LIBRARY", raising=False)
    monkeypatch.delenv("QRNN_PLUGIN_DIR", raising=False)
    monkeypatch.setattr(_native, "plugin_dirs", lambda: [tmp_path / "no-plugins"])
    out = tmp_path / "qs"
    _run_ok(["quickstart", "--out", str(out), "--train-minutes", "0.02", "--data-file", str(tiny_dict),
             "--hidden", "16", "--layers", "2", "--limit", "4", "--examples", "1", "--threads", "1"])
    text = capsys.readouterr().out
    assert "exporting the portable variant instead" in text and "qrnn-deploy build-plugins" in text
    assert json.loads((out / "bundle" / "manifest.json").read_text())["fo_pool"] == "portable"
    assert "[5/5]" in text


def test_shipped_model_loads_and_translates():
    from qrnn_deploy.cli.quickstart import pretrained_path
    from qrnn_deploy.nn import load_checkpoint
    from qrnn_deploy.vocab import CharVocab

    m = load_checkpoint(pretrained_path())
    assert m.model_type == "seq2seq" and m.extra["task"] == "de-en"
    vocab = CharVocab.from_json(m.extra["vocab"])
    # Twenty common words of the training set: the shipped model knows most of them (a partly
    # trained or broken model gets almost none). The 110-minute model had 11 right, the
    # 175-minute one 13 (it lost "water" -> "water of water", gained stool, window and moon), the
    # 265-minute one 14 (water and town back, "Zeit" -> "tie" lost). The seven named: Haus, Katze
    # and Wasser were the first test's three words; the rest every checkpoint since 175 minutes got.
    words = {"Haus": {"house"}, "Katze": {"cat"}, "Wasser": {"water"}, "Hund": {"dog"}, "Buch": {"book"},
             "Baum": {"tree"}, "Stadt": {"city", "town"}, "Auto": {"car"}, "Frau": {"woman", "wife"},
             "Mann": {"man"}, "Kind": {"child"}, "Tisch": {"table"}, "Stuhl": {"chair", "stool"},
             "Fenster": {"window"}, "Tür": {"door"}, "Brot": {"bread"}, "Milch": {"milk"}, "Sonne": {"sun"},
             "Mond": {"moon"}, "Zeit": {"time"}}
    got = {w: vocab.decode(m.greedy_decode(vocab.encode(w), max_len=30)) for w in words}
    right = [w for w, refs in words.items() if got[w] in refs]
    assert len(right) >= 10, got
    assert {"Haus", "Katze", "Wasser", "Buch", "Kind", "Tisch", "Brot"} <= set(right), got


def test_shipped_model_exports_and_the_runtime_translates_alike(tmp_path):
    from qrnn_deploy.cli.quickstart import pretrained_path
    from qrnn_deploy.errors import BuildError
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import load_checkpoint
    from qrnn_deploy.runtime import load_bundle
    from qrnn_deploy.vocab import CharVocab

    m = load_checkpoint(pretrained_path())
    vocab = CharVocab.from_json(m.extra["vocab"])
    try:
        export_bundle(m, tmp_path / "b", fo_pool="custom", verify=False)
    except BuildError:  # the native custom-op library is not built here
        export_bundle(m, tmp_path / "b", fo_pool="portable", verify=False)
    tr = load_bundle(str(tmp_path / "b"), threads=1).translator()
    for text in ("Haus", "Guten Morgen."):
        want = m.greedy_decode(vocab.encode(text), max_len=40)
        assert tr.translate_ids(text, max_len=40) == want


def test_thread_chooser_uses_the_faster_setting():
    from qrnn_deploy.nn.train import ThreadChooser

    before = torch.get_num_threads()
    try:
        for faster in (1, 2):
            ch = ThreadChooser(period=10, probe=2)
            used = []
            for _ in range(20):
                ch.before_step()
                n = torch.get_num_threads()
                used.append(n)
                ch.after_step(100, 1.0 if n == faster else 3.0)
            assert used[:4] == [1, 1, 2, 2] and set(used[4:10]) == {faster} and used[10:14] == [1, 1, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_quickstart_with_the_shipped_model_works_without_the_dictionary(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dic, "DEFAULT_PATH", tmp_path / "nope")
    _run_ok(["quickstart", "--out", str(tmp_path / "qs"), "--examples", "1", "--threads", "1"])
    text = capsys.readouterr().out
    assert "not scored" in text and "apt-get install trans-de-en" in text and "[5/5]" in text
    s = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert "scores" not in s and len(s["examples"]) == 1 and s["examples"][0]["en"]


def test_multi_reference_scores_reach_100_for_a_perfect_system():
    """Scored one segment per pair, a source with several translations can match only one of
    them: a perfect system stays below 100. Per distinct source against all its references it
    scores 100 (found by review; the per-pair figures stay as recorded)."""
    from qrnn_deploy.data.scoring import format_scores, score

    pairs = [("Haus", "house"), ("Haus", "home"), ("Die Katze schläft auf dem Sofa.", "The cat sleeps on the sofa."),
             ("Guten Morgen, wie geht es dir heute?", "Good morning, how are you today?"),
             ("Guten Morgen, wie geht es dir heute?", "Good morning, how are you doing today?")]
    first = {}
    for d, e in pairs:
        first.setdefault(d, e)
    perfect = [first[d] for d, _ in pairs]
    s = score(perfect, pairs)
    assert s["chrf"] < 100 and s["multi_ref"]["chrf"] == 100.0 and s["multi_ref"]["sources"] == 3
    assert s["multi_ref"]["bleu"] == 100.0
    assert "against all its references: 3 sources" in format_scores(s)


def test_a_line_beginning_with_an_empty_sub_entry_is_kept():
    """The real dictionary has a line starting " | antiparalleles ..." (an empty first
    sub-entry on both sides); stripping the line took the space of its first " | " and the
    sub-entries no longer lined up, so the line was dropped as misaligned (found by review)."""
    from qrnn_deploy.data.dictionary import ParseStats, parse_line

    st = ParseStats()
    line = " | antiparalleles Beta-Faltblatt {n} | paralleles Beta-Faltblatt {n} ::  | antiparallel beta sheet | " \
           "parallel beta sheet\n"
    assert parse_line(line, st) == [("antiparalleles Beta-Faltblatt", "antiparallel beta sheet"),
                                    ("paralleles Beta-Faltblatt", "parallel beta sheet")]
    assert st.misaligned == 0
    assert parse_line("   \n", st) == [] and parse_line("  # comment\n", st) == []


def _germans_in(split, n, prefix):
    """`n` German strings (prefix + number) that the stable hash puts in `split`."""
    out, i = [], 0
    while len(out) < n:
        w = f"{prefix}{i}"
        if split_of(w) == split:
            out.append(w)
        i += 1
    return out


def test_unseen_sources_exclude_line_siblings_and_near_duplicates(tmp_path):
    """A test source whose dictionary line put another form in training, or that equals a
    training string up to case / ß / punctuation, is not unseen; a test source alone on its
    line, or whose siblings are in test or valid only, is."""
    from qrnn_deploy.data.scoring import format_scores, score

    te = _germans_in("test", 4, "Testwort")
    tr = _germans_in("train", 2, "Lernwort")
    va = _germans_in("valid", 1, "Pruefwort")
    # A near-duplicate of a training string: upper case (ß -> SS), no hyphen.
    near_train = next(w for w in (f"Stra-ße{i}" for i in range(10000))
                      if split_of(w) == "train" and split_of(w.upper().replace("-", "")) == "test")
    near_test = near_train.upper().replace("-", "")
    lines = [f"{te[0]} {{f}} :: word zero",                                # alone: unseen
             f"{te[1]} {{m}} | {tr[0]} {{pl}} :: word one | words one",    # sibling in train
             f"{te[2]}; {va[0]} :: word two; word two b",                  # sibling in valid only
             f"{tr[1]} | {te[3]} :: other | word three",                 # sibling in train
             f"{near_train} :: street",
             f"{near_test} :: STREET"]
    path = tmp_path / "de-en"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = dic.load_splits(path)
    line_sources = dic.load_line_sources(path)
    assert len(line_sources) == len(lines)
    unseen = dic.unseen_sources(splits, line_sources)
    assert unseen == {te[0], te[2]}
    assert dic.unseen_sources(splits, line_sources, "valid") == {va[0]}

    test_pairs = splits["test"]
    hyps = [e for _, e in test_pairs]  # perfect translations
    s = score(hyps, test_pairs, unseen=unseen)
    assert s["unseen"]["pairs"] == 2 and s["unseen"]["multi_ref"]["sources"] == 2
    assert s["unseen"]["chrf"] == 100.0
    assert "unseen lines (no form of the headword in training): 2 pairs, 2 sources" in format_scores(s)
    s = score(hyps, test_pairs, unseen=set())
    assert s["unseen"] is None and "none among these pairs" in format_scores(s)
    assert "unseen" not in score(hyps, test_pairs)
