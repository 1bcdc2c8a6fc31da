# Ablations (config and helpers: ablations_inputs.smk): the Table 7 pools. Their pretrainings
# are the `pretrain` rule's (pt = <task>-adv-n<size> or <task>-smooth); their tables and
# figure come from report_inputs.smk's registry.
localrules:
    prepare_pool,


# One unlabeled pretraining pool (Table 7): a seeded subset of the configured source.
rule prepare_pool:
    input:
        data=rules.prepare_data.output.data,
        source=pool_source,
    output:
        pool="results/{run}/data/pool-n{size}.pt",
    log:
        "results/{run}/logs/prepare_pool/n{size}.log",
    wildcard_constraints:
        size=r"\d+",
    conda:
        "../../environment.yml"
    params:
        spec=pool_spec,
    message:
        "Building the pretraining pool of {wildcards.size} images"
    shell:
        "python -m advss pool --spec {params.spec:q} --data {input.data} --size {wildcards.size}"
        " --out {output.pool} > {log} 2>&1"
