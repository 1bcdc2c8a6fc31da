"""Model cards (issue 20): the RobustBench-style fields equal the results they come from, and
the documented plain-PyTorch lines load the exported program and give advss's logits."""
import json
import subprocess
import sys

import torch

from advss import data as D
from advss.cards import LOAD, run
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


def test_card_without_autoattack_says_so(tiny_data, tmp_path):
    model, _ = build({"task": "classification", "model": TINY_MODEL}, 10)
    save_checkpoint(tmp_path / "m.pt", model, TINY_MODEL)
    write_json(tmp_path / "t.json", {"ta": 0.5, "ra": 0.25, "n": 10, "attack": "pgd5-linf"})
    card = run({"name": "x", "dataset": "procedural", "model": TINY_MODEL, "threat": {"eps": "8/255"}}, tiny_data,
               tmp_path / "m.pt", tmp_path / "t.json", None, tmp_path / "c.json", tmp_path / "m.pt2", device="cpu")
    assert card["autoattack_acc"] is None and card["n_test_examples"]["autoattack"] is None
