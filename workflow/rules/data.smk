# Build the run's dataset file once (a local rule: compute nodes are often offline).
rule prepare_data:
    output:
        data=f"results/{RUN}/data/dataset.pt",
    log:
        f"results/{RUN}/logs/prepare_data.log",
    params:
        spec=data_spec,
    conda:
        "../../environment.yml"
    message:
        "Preparing the {RUN} dataset"
    shell:
        "python -m advss prepare --spec {params.spec:q} --out {output.data} > {log} 2>&1"
