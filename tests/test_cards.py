"""Model cards (issue 20): the RobustBench-style fields equal the results they come from, and
the documented plain-PyTorch lines load the exported program and give advss's logits."""
import json
import subprocess
import sys

import pytest
import torch

from advss import data as D
from advss.cards import LOAD, card_fields, run
from advss.io import write_json
from advss.models import load_classifier, save_checkpoint
from advss.pretext import build
from conftest import TINY_MODEL


def test_card_fields_equal_the_results_and_the_plain_lines_give_the_same_logits(tiny_data, tmp_path):
    torch.manual_seed(0)
    model, _ = build({"task": "classification", "model": TINY_MODEL}, 10)
    for p in model.parameters():  # not the init: the BN running statistics matter in eval mode
        p.data.add_(0.01 * torch.randn_like(p))
    model.trunk.stem[1].running_mean.uniform_(-0.1, 0.1)
    save_checkpoint(tmp_path / "model.pt", model, TINY_MODEL)
    test = {"ta": 0.8125, "ra": 0.4375, "n": 100, "attack": "pgd20-linf", "eps": 8 / 255}
    aa = {"ra": 0.390625, "n": 64, "version": "standard", "implementation": "pyautoattack", "n_iter": 100,
          "n_target_classes": 9, "n_queries": 5000, "fab_n_iter": 100, "components": ["apgd-ce", "apgd-t"]}
    write_json(tmp_path / "test.json", test)
    write_json(tmp_path / "aa.json", aa)
    spec = {"name": "advss acl (P3,F4) AFF", "dataset": "cifar10", "model": TINY_MODEL,
            "threat": {"norm": "linf", "eps": "8/255"}}
    run(spec, tiny_data, tmp_path / "model.pt", tmp_path / "test.json", tmp_path / "aa.json",
        tmp_path / "card.json", tmp_path / "model.pt2", device="cpu")
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["clean_acc"] == "81.25" and card["autoattack_acc"] == "39.06" and card["pgd_ra"] == "43.75"
    assert card["eps"] == "8/255" and card["threat_model"] == "Linf" and card["dataset"] == "cifar10"
    assert card["architecture"] == "ResNet-tiny (width 8)" and card["name"] == spec["name"]
    assert card["n_test_examples"] == {"clean": 100, "autoattack": 64}
    assert card["autoattack"]["version"] == "standard" and card["autoattack"]["n_iter"] == 100
    for key in ("additional_data", "number_forward_passes", "reported", "footnote", "unreliable", "venue", "link"):
        assert key in card  # RobustBench's model-info keys
    assert card["load"] == LOAD
    # the card's own lines, in a fresh Python where advss cannot be imported, equal advss's logits
    x = D.to_float(D.load(tiny_data, "cpu")["test"][0][:5])
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys; sys.modules['advss'] = None\nimport torch\n"
              f"images = torch.load({str(tmp_path / 'x.pt')!r})\n"
              + LOAD.replace('"model.pt2"', repr(str(tmp_path / "model.pt2")))
              + f"\ntorch.save(logits.detach(), {str(tmp_path / 'logits.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    ref = load_classifier(tmp_path / "model.pt", TINY_MODEL, 10, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), ref(x), rtol=0, atol=1e-6)


def test_a_model_without_autoattack_gets_no_card(tiny_data, tmp_path):
    """RobustBench ranks cards by float(autoattack_acc): a card with null there breaks its
    leaderboard for every model beside it (issue 24), so there is none, and the error says why."""
    model, _ = build({"task": "classification", "model": TINY_MODEL}, 10)
    save_checkpoint(tmp_path / "m.pt", model, TINY_MODEL)
    write_json(tmp_path / "t.json", {"ta": 0.5, "ra": 0.25, "n": 10, "attack": "pgd5-linf"})
    with pytest.raises(ValueError, match="no AutoAttack result, so no card"):
        run({"name": "x", "dataset": "procedural", "model": TINY_MODEL, "threat": {"eps": "8/255"}}, tiny_data,
            tmp_path / "m.pt", tmp_path / "t.json", None, tmp_path / "c.json", tmp_path / "m.pt2", device="cpu")
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "m.pt2").exists()


# ---- RobustBench's leaderboard code, transcribed: RobustBench/robustbench @78fcc9e (2025-03-31), identical
# in robustbench 1.1.1 on PyPI. robustbench itself is not a test dependency: `pip install robustbench` adds 18
# packages (timm==1.0.9 pinned, gdown, geotorch, torchdiffeq, huggingface_hub, ...) and `robustbench.utils`
# imports its model zoo, which imports timm. What each function reads from a model_info JSON, and how:
ACC_FIELD = ("external", "autoattack_acc")  # robustbench/utils.py ACC_FIELDS[ThreatModel.Linf]


def rb_get_key(x):
    """robustbench/leaderboard/template.py generate_leaderboard's sort key (and utils.get_key's)."""
    for k in ACC_FIELD:
        if k in x.keys():
            return float(x[k])


def rb_generate_leaderboard(folder):
    """template.py generate_leaderboard: load every *.json, sort by get_key (descending); the
    Jinja template then reads link, name, footnote, clean_acc, autoattack_acc, external,
    unreliable, additional_data, architecture and venue (undefined fields render empty)."""
    models = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    models.sort(key=rb_get_key, reverse=True)
    return [(m["name"], m["clean_acc"], m[ACC_FIELD[-1]], m.get("external") or m[ACC_FIELD[-1]], m["architecture"],
             m["venue"], "Unknown" if "unreliable" not in m else bool(m["unreliable"])) for m in models]


def rb_get_leaderboard_latex(folder, l_keys=("clean_acc", "external", "additional_data", "architecture", "venue",
                                             "modelzoo_id"), sort_by="external"):
    """utils.py get_leaderboard_latex (the model zoo's ids replaced by 'N/A': ours are not in it)."""
    entries = []
    for json_path in folder.glob("*.json"):
        model_dict = json.loads(json_path.read_text())
        row = []
        for k in l_keys:
            if k == "external" and "external" not in model_dict.keys():
                model_dict[k] = model_dict["autoattack_acc"]
            if k == "additional_data":
                v = "Y" if model_dict[k] else "N"
            elif k == "architecture":
                v = model_dict[k].replace("WideResNet", "WRN").replace("ResNet", "RN")
            elif k == "modelzoo_id":
                v = "N/A"
            else:
                v = model_dict[k]
            row.append(str(v))
        entries.append((" & ".join(row), float(model_dict[sort_by])))
    return sorted(entries, key=lambda e: e[1], reverse=True)


def rb_list_available_models_fields(folder):
    """utils.py list_available_models' conversions of each JSON ('' venue -> 'Unpublished', accuracies / 100)."""
    out = []
    for p in folder.glob("*.json"):
        d = json.loads(p.read_text())
        d["venue"] = "Unpublished" if d["venue"] == "" else d["venue"]
        for k in ACC_FIELD:
            if k in d.keys():
                d[k] = float(d[k]) / 100
        d["clean_acc"] = float(d["clean_acc"]) / 100
        out.append(d)
    return sorted(out, key=lambda d: -rb_get_key(d))


def rb_get_leaderboard_bibtex(folder):
    """utils.py get_leaderboard_bibtex: name, authors and venue ('N/A' skipped; the year is its last word)."""
    entries = set()
    for p in folder.glob("*.json"):
        d = json.loads(p.read_text())
        title, authors, venue = d["name"], d["authors"], d["venue"]
        if venue == "N/A":
            continue
        entries.add((p.stem.split("_")[0], title, authors.replace(", ", " and "), venue.split(" ")[0].split(",")[0],
                     venue.split(" ")[-1]))
    return entries


# Two real model_info files (RobustBench/robustbench @78fcc9e, model_info/cifar10/Linf/).
ROBUSTBENCH_CARDS = {
    "Chen2020Adversarial": {
        "link": "https://arxiv.org/abs/2003.12862",
        "name": "Adversarial Robustness: From Self-Supervised Pre-Training to Fine-Tuning",
        "authors": "Tianlong Chen, Sijia Liu, Shiyu Chang, Yu Cheng, Lisa Amini, Zhangyang Wang",
        "additional_data": False, "number_forward_passes": 3, "dataset": "cifar10", "venue": "CVPR 2020",
        "architecture": "ResNet-50", "eps": "8/255", "clean_acc": "86.04", "reported": "54.64",
        "footnote": "Uses ensembles of 3 models.", "autoattack_acc": "51.56"},
    "Standard": {
        "link": "https://github.com/RobustBench/robustbench/", "name": "Standardly trained model", "authors": "",
        "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10", "venue": "N/A",
        "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "94.78", "reported": "0.0",
        "autoattack_acc": "0.0"},
}


def rb_read_all(folder):
    return (rb_generate_leaderboard(folder), rb_get_leaderboard_latex(folder), rb_list_available_models_fields(folder),
            rb_get_leaderboard_bibtex(folder))


def test_the_transcription_fails_as_robustbench_did_on_a_null_autoattack_card(tmp_path):
    """The failure issue 24 reports (robustbench 1.1.1, a card with autoattack_acc null beside
    two real ones): TypeError in generate_leaderboard and get_leaderboard_latex."""
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    for name, card in {**ROBUSTBENCH_CARDS, "advss_null": {**ROBUSTBENCH_CARDS["Standard"],
                                                            "autoattack_acc": None}}.items():
        write_json(folder / f"{name}.json", card)
    with pytest.raises(TypeError):
        rb_generate_leaderboard(folder)
    with pytest.raises(TypeError):
        rb_get_leaderboard_latex(folder)


@pytest.mark.parametrize("paper", [
    {"link": "https://openreview.net/forum?id=0qmwFNJyxCL", "authors": "Rundong Luo, Yifei Wang, Yisen Wang",
     "venue": "ICLR 2023", "reported": 50.52},
    {},  # nothing known: RobustBench's own files use "" for unknown fields
])
def test_robustbench_reads_our_card_beside_its_own(tmp_path, paper):
    spec = {"name": "advss DynACL (P3,F4) AFF, run r, seed 0", "dataset": "cifar10",
            "model": {"arch": "resnet18", "width": 64}, "threat": {"norm": "linf", "eps": "8/255"}, **paper}
    test = {"ta": 0.8125, "ra": 0.4375, "n": 10000, "attack": "pgd20-linf"}
    aa = {"ra": 0.5, "n": 10000, "version": "standard"}
    folder = tmp_path / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    for name, card in ROBUSTBENCH_CARDS.items():
        write_json(folder / f"{name}.json", card)
    write_json(folder / "advss_dynacl.json", card_fields(spec, test, aa))
    board, latex, listed, bib = rb_read_all(folder)
    assert [row[0] for row in board] == [ROBUSTBENCH_CARDS["Chen2020Adversarial"]["name"], spec["name"],
                                         "Standardly trained model"]  # ranked by AutoAttack accuracy
    assert board[1][1:4] == ("81.25", "50.00", "50.00") and board[1][4] == "ResNet-18"
    assert [e[1] for e in latex] == [51.56, 50.0, 0.0]
    ours = next(d for d in listed if d["name"] == spec["name"])
    assert ours["autoattack_acc"] == 0.5 and ours["clean_acc"] == 0.8125
    assert ours["venue"] == (paper.get("venue") or "Unpublished")
    card = json.loads((folder / "advss_dynacl.json").read_text())
    assert card["reported"] == ("50.52" if paper else "") and card["link"] == paper.get("link", "")
    if paper:
        assert ("advss", spec["name"], "Rundong Luo and Yifei Wang and Yisen Wang", "ICLR", "2023") in bib


def test_card_info_of_robust_ssl_config_is_valid_and_agrees_with_the_published_figures():
    """config/robust-ssl.yaml's card metadata: valid under the section's schema, one entry per
    method with link, authors and a 'Venue YEAR' venue, and AFF's reported figure equal to the
    one the robust_ssl table prints beside it (advss.protocol.PUBLISHED_ROBUST_SSL)."""
    import jsonschema
    import yaml

    from advss import protocol as P
    from conftest import ROOT

    section = yaml.safe_load((ROOT / "config/robust-ssl.yaml").read_text())["robust_ssl"]
    schema = yaml.safe_load((ROOT / "workflow/schemas/robust_ssl.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(section)
    info = section["card_info"]
    assert set(info) == set(section["methods"])
    for m, card in info.items():
        assert card["link"].startswith("https://") and card["authors"] and card["venue"].split()[-1].isdigit(), m
    for m in ("acl", "dynacl"):
        assert info[m]["reported"]["F4"] == P.PUBLISHED_ROBUST_SSL[m][1]
    bad = {**section, "card_info": {"acl": {"reported": {"F4": "49.62%"}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_dry_run_cards_carry_the_config_metadata_and_need_autoattack(tmp_path):
    """robust-ssl.yaml's card jobs carry each method's paper and its published figure for that
    mode; with AutoAttack off the run makes no card (and so no card with a null accuracy)."""
    import yaml

    from conftest import ROOT
    from test_robust_ssl_workflow import SNAKEFILE, _dry, _specs, robust_ssl_dry

    cfg = yaml.safe_load((ROOT / "config/robust-ssl.yaml").read_text())
    out, jobs = robust_ssl_dry()
    cards = {s["name"].split(", run")[0]: s for s in _specs(out, "card")}
    assert len(cards) == jobs["model_card"] == 12  # SimCLR, ACL, DynACL, DynACL++ × SLF, ALF, AFF
    assert cards["advss DynACL++ (P3,F4) AFF"]["reported"] == 50.34  # RSB's README
    dyn = cards["advss DynACL (P3,F4) AFF"]
    assert (dyn["venue"], dyn["reported"]) == ("ICLR 2023", 50.52) and dyn["authors"].startswith("Rundong Luo")
    assert cards["advss ACL (DS) (P3,F1) SLF"]["reported"] == 39.17
    assert cards["advss SimCLR (P2,F4) AFF"]["reported"] is None and cards["advss SimCLR (P2,F4) AFF"]["link"]
    cfg["robustness"]["autoattack"]["enabled"] = False
    (tmp_path / "noaa.yaml").write_text(yaml.safe_dump(cfg))
    _, jobs = _dry(["-s", str(SNAKEFILE), "-d", str(tmp_path), "--configfile", str(tmp_path / "noaa.yaml")], tmp_path)
    assert "model_card" not in jobs and "finetune" in jobs
