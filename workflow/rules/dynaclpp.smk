# DynACL++'s jobs (issue 25, item 2): pseudo-labels by k-means on DynACL's features, then LP
# and AFT on them (dynaclpp_inputs.smk: the section, specs and inputs; functions only).
rule pseudolabel:
    input:
        data=rules.prepare_data.output.data,
        model=f"results/{{run}}/pretrain/{P.DYNACLPP_BASE}/seed{{seed}}/model.pt",
    output:
        labels="results/{run}/pseudolabels/dynacl++/seed{seed}/labels.pt",
        summary="results/{run}/pseudolabels/dynacl++/seed{seed}/labels.json",
    log:
        "results/{run}/logs/pseudolabel/dynacl++/seed{seed}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=30,
    params:
        spec=pseudolabel_spec,
    message:
        "Pseudo-labels for DynACL++: k-means on DynACL's features (seed {wildcards.seed})"
    shell:
        "python -m advss pseudolabel --spec {params.spec:q} --data {input.data} --model {input.model}"
        " --threads {threads} --out {output.labels} --out-json {output.summary} > {log} 2>&1"


rule dynaclpp_stage:
    input:
        data=rules.prepare_data.output.data,
        init=dynaclpp_init,
        labels=rules.pseudolabel.output.labels,
    output:
        model="results/{run}/pretrain/{stage}/seed{seed}/model.pt",
        metrics="results/{run}/pretrain/{stage}/seed{seed}/metrics.csv",
        meta="results/{run}/pretrain/{stage}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/pretrain/{stage}/seed{seed}.log",
    wildcard_constraints:
        stage=P.DYNACLPP_STAGE_RE,
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=dynaclpp_runtime,
    params:
        spec=dynaclpp_spec,
        resume="results/{run}/.resume/pretrain/{stage}/seed{seed}",
    message:
        "DynACL++ {wildcards.stage} on the pseudo-labels (seed {wildcards.seed})"
    shell:
        "python -m advss finetune --spec {params.spec:q} --data {input.data} --init {input.init}"
        " --labels {input.labels} --threads {threads} --out-model {output.model}"
        " --out-metrics {output.metrics} --out-meta {output.meta} --resume-dir {params.resume}"
        " > {log} 2>&1"
