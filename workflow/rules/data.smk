# Build the run's dataset file once (a local rule: compute nodes are often offline).
rule prepare_data:
    input:
        # an edited class map rebuilds the dataset (and so everything trained on it)
        class_map=(
            [config["data"]["imagefolder"]["class_map"]]
            if config["data"]["name"] == "imagefolder"
            else []
        ),
    output:
        data=f"results/{RUN}/data/dataset.pt",
    log:
        f"results/{RUN}/logs/prepare_data.log",
    conda:
        "../../environment.yml"
    params:
        spec=data_spec,
    message:
        f"Preparing the {RUN} dataset"
    shell:
        "python -m advss prepare --spec {params.spec:q} --out {output.data} > {log} 2>&1"
