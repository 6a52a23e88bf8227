"""Every seed loader, dedup, --limit, --shard, and the errors a user can fix."""
import json

import pytest

from baize.config import BaizeError
from baize.data.seeds import SAMPLES, load_seeds, parse_shard, seed_id


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return str(path)


def texts(seeds):
    return [s.text for s in seeds]


# --- formats ------------------------------------------------------------------------------------

def test_jsonl_seed_field(tmp_path):
    p = write(tmp_path / "mine.jsonl", '{"seed": "What is A?", "lang": "en"}\n\n{"seed": "What is B?"}\n')
    seeds = load_seeds(p)
    assert texts(seeds) == ["What is A?", "What is B?"]
    assert all(s.source == "mine" for s in seeds)
    assert seeds[0].id == seed_id("mine", "What is A?") and seeds[0].id.startswith("mine-")
    assert seeds[0].meta == {"lang": "en"}


def test_jsonl_custom_field(tmp_path):
    p = write(tmp_path / "q.jsonl", '{"id": 1, "body": "x", "title": "How do I sort a dict?"}\n'
                                    '{"id": 2, "body": "y", "title": "Why is my loop slow?"}\n')
    assert texts(load_seeds(p, field="title")) == ["How do I sort a dict?", "Why is my loop slow?"]
    assert texts(load_seeds(p, field="body")) == ["x", "y"]
    assert texts(load_seeds(p)) == ["How do I sort a dict?", "Why is my loop slow?"]  # `title` is guessed


def test_jsonl_row_source_overrides_file_name(tmp_path):
    p = write(tmp_path / "mixed.jsonl", '{"seed": "q1", "source": "quora"}\n{"seed": "q2", "source": "medquad"}\n')
    seeds = load_seeds(p)
    assert [s.source for s in seeds] == ["quora", "medquad"]
    assert seeds[1].id == seed_id("medquad", "q2")


def test_json_array_file(tmp_path):
    rows = [{"topic": "black holes", "input": "..."}, {"topic": "tea ceremonies", "input": "..."}]
    p = write(tmp_path / "paper.json", json.dumps(rows, indent=2))
    assert texts(load_seeds(p)) == ["black holes", "tea ceremonies"]
    p2 = write(tmp_path / "plain.json", json.dumps(["first seed", "second seed"]))
    assert texts(load_seeds(p2)) == ["first seed", "second seed"]
    p3 = write(tmp_path / "indented.json", "\n\n  " + json.dumps(rows))  # whitespace before the array
    assert texts(load_seeds(p3)) == ["black holes", "tea ceremonies"]


def test_jsonl_of_strings(tmp_path):
    p = write(tmp_path / "s.jsonl", '"one"\n"two"\n')
    assert texts(load_seeds(p)) == ["one", "two"]


def test_csv_column(tmp_path):
    p = write(tmp_path / "qs.csv", 'id,question,votes\n1,"What is A, really?",3\n2,"Multi\nline seed",5\n')
    seeds = load_seeds(p)
    assert texts(seeds) == ["What is A, really?", "Multi\nline seed"]
    assert seeds[0].source == "qs" and seeds[0].meta == {"id": "1", "votes": "3"}
    p2 = write(tmp_path / "t.csv", "name,ask\nx,Why is the sky blue?\ny,Why is grass green?\n")
    assert texts(load_seeds(p2, field="ask")) == ["Why is the sky blue?", "Why is grass green?"]


def test_csv_with_excel_bom(tmp_path):
    # Excel writes UTF-8 CSV with a byte-order mark; the first column's name must still match
    p = write(tmp_path / "excel.csv", "question,n\nWhat is A?,1\n", encoding="utf-8-sig")
    assert texts(load_seeds(p)) == ["What is A?"]
    assert texts(load_seeds(p, field="question")) == ["What is A?"]
    p2 = write(tmp_path / "bom.jsonl", '{"seed": "What is B?"}\n', encoding="utf-8-sig")
    assert texts(load_seeds(p2)) == ["What is B?"]


def test_tsv(tmp_path):
    p = write(tmp_path / "qs.tsv", "prompt\tcategory\nExplain TCP, briefly\tnet\nWhat is DNS?\tnet\n")
    seeds = load_seeds(p)
    assert texts(seeds) == ["Explain TCP, briefly", "What is DNS?"]
    assert seeds[0].meta == {"category": "net"}


def test_txt(tmp_path):
    p = write(tmp_path / "topics.txt", "How do vaccines work?\n\n  Why do cats purr?  \nWhat is inflation?")
    seeds = load_seeds(p)
    assert texts(seeds) == ["How do vaccines work?", "Why do cats purr?", "What is inflation?"]
    assert {s.source for s in seeds} == {"topics"}


MEDQUAD_DOC = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="{id}" source="GARD" url="https://example.org/{id}">
<Focus>{focus}</Focus>
<QAPairs>
<QAPair pid="1"><Question qid="{id}-1" qtype="information">What is (are) {focus} ?</Question><Answer>{focus} is a rare disease.</Answer></QAPair>
<QAPair pid="2"><Question qid="{id}-2" qtype="symptoms">What are the symptoms of {focus} ?</Question><Answer>Fever.</Answer></QAPair>
<QAPair pid="3"><Question qid="{id}-3" qtype="treatment"> </Question><Answer>Empty question.</Answer></QAPair>
</QAPairs>
</Document>
"""


def make_medquad(root):
    for sub, doc_id, focus in [("1_CancerGov_QA", "0000001", "Leukemia"), ("2_GARD_QA", "0000002", "Fabry disease")]:
        (root / sub).mkdir(parents=True)
        (root / sub / f"{doc_id}.xml").write_text(MEDQUAD_DOC.format(id=doc_id, focus=focus))
    return root


def test_medquad_xml_folder(tmp_path):
    root = make_medquad(tmp_path / "MedQuAD")
    seeds = load_seeds(str(root))
    assert texts(seeds) == ["What is (are) Leukemia ?", "What are the symptoms of Leukemia ?",
                            "What is (are) Fabry disease ?", "What are the symptoms of Fabry disease ?"]
    assert {s.source for s in seeds} == {"medquad"}
    m = seeds[3].meta
    assert m["focus"] == "Fabry disease" and m["qtype"] == "symptoms" and m["qid"] == "0000002-2"
    assert m["answer"] == "Fever." and m["url"] == "https://example.org/0000002" and m["subset"] == "2_GARD_QA"


def test_medquad_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaizeError, match="no \\*.xml files"):
        load_seeds(str(tmp_path / "empty"))
    bad = make_medquad(tmp_path / "bad")
    (bad / "1_CancerGov_QA" / "broken.xml").write_text("<Document><Focus>x</Focus>\n<QAPairs>\n")
    with pytest.raises(BaizeError, match=r"broken\.xml:\d+: malformed XML"):
        load_seeds(str(bad))


def test_hf_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = tmp_path / "myqs"
    ds.mkdir()
    (ds / "train.jsonl").write_text("".join(json.dumps({"question": f"Question {i}?", "n": i}) + "\n" for i in range(5)))
    seeds = load_seeds(f"hf:{ds}:train:question")
    assert texts(seeds) == [f"Question {i}?" for i in range(5)]
    assert {s.source for s in seeds} == {"myqs"}
    assert texts(load_seeds(f"hf:{ds}:question", limit=2)) == ["Question 0?", "Question 1?"]  # split defaults to train
    with pytest.raises(BaizeError, match="no field 'title'.*question"):
        load_seeds(f"hf:{ds}:train:title")
    with pytest.raises(BaizeError, match="hf:DATASET"):
        load_seeds("hf:justaname")


@pytest.mark.parametrize("name", SAMPLES)
def test_shipped_samples(name):
    seeds = load_seeds(name)
    assert len(seeds) >= 150
    assert len({s.id for s in seeds}) == len(seeds)
    assert all(s.source == name and s.id.startswith(name + "-") and s.text.strip() == s.text and s.text for s in seeds)


# --- dedup, limit, shard ------------------------------------------------------------------------

def test_dedup_case_and_whitespace(tmp_path):
    p = write(tmp_path / "d.txt", "What is  Python?\nwhat is python?\n  WHAT IS PYTHON?\t\nWhat is\tPython ?\nOther\n")
    seeds = load_seeds(p)
    assert texts(seeds) == ["What is  Python?", "What is\tPython ?", "Other"]  # first spelling kept
    assert seed_id("d", "what is   PYTHON?") == seeds[0].id


def test_limit(tmp_path):
    p = write(tmp_path / "l.txt", "".join(f"seed {i}\n" for i in range(20)))
    assert texts(load_seeds(p, limit=5)) == [f"seed {i}" for i in range(5)]
    assert len(load_seeds("quora", limit=7)) == 7


def test_shard_disjoint_deterministic_union():
    whole = load_seeds("quora")
    parts = [load_seeds("quora", shard=f"{i}/3") for i in range(3)]
    ids = [{s.id for s in p} for p in parts]
    assert all(len(p) > 50 for p in parts)  # roughly balanced
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == {s.id for s in whole}
    assert sum(map(len, parts)) == len(whole)
    assert [s.id for s in load_seeds("quora", shard="1/3")] == [s.id for s in parts[1]]  # deterministic
    assert load_seeds("quora", shard=(1, 3)) == parts[1]
    # each shard keeps file order, and --limit takes the first N of the shard
    order = {s.id: i for i, s in enumerate(whole)}
    assert [order[s.id] for s in parts[2]] == sorted(order[s.id] for s in parts[2])
    assert load_seeds("quora", shard="2/3", limit=4) == parts[2][:4]
    assert load_seeds("quora", shard="0/1") == whole


def test_shard_same_for_duplicates_spelled_differently(tmp_path):
    p = write(tmp_path / "s.txt", "".join(f"Question number {i}?\nquestion  NUMBER {i}?\n" for i in range(40)))
    parts = [load_seeds(p, shard=f"{i}/4") for i in range(4)]
    assert sum(map(len, parts)) == 40


# --- errors -------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(BaizeError, match="no such file"):
        load_seeds(str(tmp_path / "nope.jsonl"))
    with pytest.raises(BaizeError, match="quora"):  # the message lists the sample names
        load_seeds("quroa")


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.txt", "\n\n  \n"), ("e.csv", ""),
                                          ("e.csv", "question\n\n"), ("e.json", "[]")])
def test_empty_file(tmp_path, name, content):
    p = write(tmp_path / name, content)
    with pytest.raises(BaizeError, match="no seeds found"):
        load_seeds(p)


def test_bad_field_name(tmp_path):
    p = write(tmp_path / "f.jsonl", '{"q": "a", "body": "b"}\n')
    with pytest.raises(BaizeError) as e:
        load_seeds(p, field="question")
    msg = str(e.value)
    assert f"{p}:1" in msg and "'question'" in msg and "['body', 'q']" in msg and "--seed-field" in msg
    with pytest.raises(BaizeError, match=r"f\.jsonl:1: no 'seed' field.*\['body', 'q'\]"):
        load_seeds(p)  # nothing to guess
    # the first row decides the field; a later row without it names its line
    p2 = write(tmp_path / "g.jsonl", '{"question": "a"}\n{"question": "b"}\n{"title": "c"}\n')
    with pytest.raises(BaizeError, match=r"g\.jsonl:3: no field 'question'.*\['title'\]"):
        load_seeds(p2)
    p3 = write(tmp_path / "c.csv", "id,text\n1,hello\n")
    with pytest.raises(BaizeError, match=r"c\.csv:1: no field 'question'.*\['id', 'text'\]"):
        load_seeds(p3, field="question")


def test_malformed_json_line(tmp_path):
    p = write(tmp_path / "m.jsonl", '{"seed": "a"}\n{"seed": "b"}\n{"seed": "c",\n{"seed": "d"}\n')
    with pytest.raises(BaizeError, match=r"m\.jsonl:3: not valid JSON"):
        load_seeds(p)
    p2 = write(tmp_path / "arr.json", '[\n{"seed": "a"},\n{"seed": "b"\n]')
    with pytest.raises(BaizeError, match=r"arr\.json:\d+: not valid JSON"):
        load_seeds(p2)
    p3 = write(tmp_path / "n.jsonl", '{"seed": "a"}\n{"seed": 42}\n')
    with pytest.raises(BaizeError, match=r"n\.jsonl:2: field 'seed' must be a string"):
        load_seeds(p3)
    p4 = write(tmp_path / "l.jsonl", '{"seed": "a"}\n[1, 2]\n')
    with pytest.raises(BaizeError, match=r"l\.jsonl:2: expected a JSON object"):
        load_seeds(p4)


@pytest.mark.parametrize("spec", ["3/3", "1", "a/b", "-1/2", "1/0", "0/0", "1/2/3"])
def test_bad_shard_spec(spec):
    with pytest.raises(BaizeError, match="--shard .*I/N"):
        parse_shard(spec)
    with pytest.raises(BaizeError, match="--shard"):
        load_seeds("quora", shard=spec)


def test_good_shard_spec():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    assert parse_shard(None) is None and parse_shard("") is None
