"""The workflow's shape (issue 14): no two rules with the same body, helpers in *_inputs.smk,
parse time reads only advss.protocol and advss.classmap, and the task names written once."""
from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

from conftest import ROOT

WORKFLOW = ROOT / "workflow"
TASK_NAMES = ("rotation", "jigsaw", "selfie")  # the names whose repetition the tests look for
PARSE_TIME_MODULES = {"advss.protocol", "advss.classmap"}


def smk_files(workflow=WORKFLOW):
    return [workflow / "Snakefile", *sorted((workflow / "rules").glob("*.smk"))]


# ------------------------------------------------------------------ rule bodies
def rule_blocks(path: Path):
    """(name, body text) of every `rule NAME:` / `rule:` (generated, `name:` inside) block."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)rule\s*(\w*)\s*:\s*(#.*)?$", line)
        if not m:
            continue
        indent, body = len(m.group(1)), []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt)
        yield m.group(2) or "<generated>", textwrap.dedent("\n".join(body)).strip() + "\n"


def body_signature(body: str) -> tuple:
    """The body with its names taken out: string literals (paths, messages, commands), values
    (function names and dotted references; numbers stay) and wildcard names all become
    placeholders; directive and keyword names stay; directives in any order. Two rules with
    equal signatures are copies of each other."""
    out, directive = [], None
    toks = [t for t in tokenize.generate_tokens(io.StringIO(body).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER)]
    fstring = {getattr(tokenize, n, None) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")} - {None}
    if fstring:  # Python 3.12+ splits f-strings into pieces: one placeholder per f-string
        merged, depth = [], 0
        for t in toks:
            if t.type == tokenize.FSTRING_START:
                if depth == 0:
                    merged.append(t._replace(type=tokenize.STRING, string="f''"))
                depth += 1
            elif t.type == tokenize.FSTRING_END:
                depth -= 1
            elif depth == 0:
                merged.append(t)
        toks = merged
    skip_name_value = False
    for k, t in enumerate(toks):
        nxt = toks[k + 1].string if k + 1 < len(toks) else ""
        if t.type == tokenize.NAME and nxt == ":" and t.start[1] == 0:  # a directive
            directive = t.string
            skip_name_value = directive == "name"  # `name:` is the rule's name, not its body
            if not skip_name_value:
                out.append(directive + ":")
            continue
        if skip_name_value or (t.string == ":" and out and out[-1].endswith(":")):
            continue
        if t.type == tokenize.STRING:
            out.append("S")
        elif t.type == tokenize.NAME and nxt == "=":
            out.append("W=" if directive == "wildcard_constraints" else t.string + "=")
        elif t.type == tokenize.NAME:
            out.append("N")
        elif t.string != "=":
            out.append(t.string)
    # a dotted reference (rules.prepare_data.output.data) is one name; directive order is cosmetic
    text = re.sub(r"N(?: \. N)+", "N", " ".join(out))
    return tuple(sorted(re.split(r" (?=\w+:(?: |$))", text)))


def duplicate_rules(workflow=WORKFLOW):
    seen, dups = {}, []
    for path in smk_files(workflow):
        for name, body in rule_blocks(path):
            sig = body_signature(body)
            if sig in seen:
                dups.append((seen[sig], f"{path.name}:{name}"))
            else:
                seen[sig] = f"{path.name}:{name}"
    return dups


def test_no_two_rules_have_the_same_body_apart_from_names():
    blocks = [b for p in smk_files() for b in rule_blocks(p)]
    assert len(blocks) >= 12  # the parser finds the rules (all, pretrain, finetune, ..., the generated one)
    assert duplicate_rules() == []


def test_the_duplicate_finder_sees_a_copied_rule(tmp_path):
    """A table rule written out by hand beside the generated ones, or a second pretrain rule
    with another wildcard name, is reported."""
    wf = tmp_path / "workflow"
    (wf / "rules").mkdir(parents=True)
    (wf / "Snakefile").write_text("")
    rule = textwrap.dedent('''
        rule {name}:
            input:
                data=DATA,
            output:
                model="results/{{run}}/pretrain/{{{wc}}}/seed{{seed}}/model.pt",
            log:
                "results/{{run}}/logs/pretrain/{{{wc}}}/seed{{seed}}.log",
            wildcard_constraints:
                {wc}=P.{rx},
            conda:
                "../../environment.yml"
            message:
                "{msg} {{wildcards.{wc}}}"
            shell:
                "python -m advss pretrain --spec {{params.spec:q}} > {{log}} 2>&1"
        ''')
    (wf / "rules" / "a.smk").write_text(rule.format(name="pretrain_ensemble", wc="variant", rx="ENS", msg="Ensemble"))
    (wf / "rules" / "b.smk").write_text(rule.format(name="pretrain_ablation", wc="abl", rx="ABL", msg="Ablated"))
    assert duplicate_rules(wf) == [("a.smk:pretrain_ensemble", "b.smk:pretrain_ablation")]
    (wf / "rules" / "b.smk").write_text(rule.format(name="pretrain_ablation", wc="abl", rx="ABL", msg="Ablated")
                                        .replace("    conda:", "    threads: 1\n    conda:"))
    assert duplicate_rules(wf) == []


def test_table_and_figure_rules_come_from_one_registry():
    """No table or figure rule is written out by hand: report.smk loops over REPORTS."""
    named = {name for p in smk_files() for name, _ in rule_blocks(p)}
    assert not {n for n in named if re.match(r"(table|figure)\w*$|claims$", n)}, named
    report = (WORKFLOW / "rules" / "report.smk").read_text()
    assert re.search(r"^for _name in REPORTS:", report, re.M) and "name:\n            _name" in report


# ------------------------------------------------------------------ helper files
def test_helper_files_follow_one_naming_scheme():
    """Rules live in rule files, functions in common.smk and the *_inputs.smk helpers."""
    for path in smk_files():
        text = path.read_text()
        has_rules, has_defs = bool(re.search(r"^\s*rule\b", text, re.M)), bool(re.search(r"^def ", text, re.M))
        assert not (has_rules and has_defs), path
        if has_defs:
            assert path.name == "common.smk" or path.name.endswith("_inputs.smk"), path
    assert not list((WORKFLOW / "rules").glob("*_common.smk"))


# ------------------------------------------------------------------ parse-time imports
def smk_imports(workflow=WORKFLOW):
    """advss modules the .smk files import (import x / from x import y, anywhere in a file)."""
    mods = set()
    for path in smk_files(workflow):
        for m in re.finditer(r"^\s*from\s+(advss[\w.]*)\s+import\s+([\w, ]+)|^\s*import\s+(advss[\w.]*)",
                             path.read_text(), re.M):
            if m.group(3):
                mods.add(m.group(3))
            elif m.group(1) == "advss":  # from advss import protocol as P
                mods |= {f"advss.{n.split()[0]}" for n in m.group(2).split(",")}
            else:
                mods.add(m.group(1))
        assert "__import__" not in path.read_text() and "importlib" not in path.read_text(), path
    return mods


def module_imports(path: Path):
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
    return mods


def test_parse_time_reads_only_protocol_and_classmap():
    assert smk_imports() <= PARSE_TIME_MODULES, smk_imports()
    for mod in PARSE_TIME_MODULES:  # and those two stand alone: no other advss module, no torch
        imports = module_imports(ROOT / (mod.replace(".", "/") + ".py"))
        assert not {m for m in imports if m.startswith("advss") or m.split(".")[0] in ("torch", "numpy")}, (mod, imports)


def test_a_dry_run_imports_no_other_advss_module(tmp_path):
    """The real thing: parse the workflow and build the demo DAG (specs, inputs, config hash)
    under -X importtime and list the advss modules Python loaded."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "all", "-q",
                        "-s", WORKFLOW / "Snakefile", "-d", tmp_path, "--configfile", ROOT / "config/demo.yaml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = set(re.findall(r"\|\s+(advss[\w.]*)\s*$", p.stderr, re.M)) | set(
        re.findall(r"\|\s+(torch)\s*$", p.stderr, re.M))
    assert loaded and loaded <= PARSE_TIME_MODULES | {"advss"}, loaded


# ------------------------------------------------------------------ task names
def test_task_names_are_written_once():
    """No workflow file or schema lists the tasks (a line naming two or more of them is a
    copy of advss.protocol.TASKS: a regex, an enum, a default)."""
    for path in [*smk_files(), *sorted((WORKFLOW / "schemas").glob("*.yaml"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "description" in code:
                continue
            assert sum(t in code for t in TASK_NAMES) < 2, f"{path.name}:{n}: {line.strip()}"


def test_the_regexes_follow_the_task_list():
    """Add a task to TASKS alone (in a copy of protocol.py): every id grammar takes it."""
    src = (ROOT / "advss/protocol.py").read_text()
    old = 'TASKS = ("rotation", "jigsaw", "selfie")'
    assert src.count(old) == 1
    ns = {"__name__": "protocol_with_a_new_task"}
    exec(compile(src.replace(old, 'TASKS = ("rotation", "jigsaw", "selfie", "colorization")'), "protocol", "exec"), ns)
    for rx, ok in [("PT_RE", "colorization-adv"), ("SRC_RE", "colorization-std"), ("ABLATION_PT_RE", "colorization-smooth"),
                   ("PRETRAIN_RE", "colorization-adv-n300"), ("MEMBERS_RE", "colorization+rotation"),
                   ("AA_MEMBERS_RE", "jigsaw+colorization")]:
        assert re.fullmatch(ns[rx], ok), rx
    import advss.protocol as P

    assert not re.fullmatch(P.PT_RE, "colorization-adv") and re.fullmatch(P.PT_RE, "jigsaw-adv")
    assert ns["pretrain_kind"]("colorization-smooth") == "ablation" and P.pretrain_kind("ensemble-se") == "ensemble"
