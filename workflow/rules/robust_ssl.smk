# A RobustBench-style model card and a plain-PyTorch program (torch.export) per fine-tuned
# contrastive model (robust_ssl_inputs.smk: model_cards, card_spec); `all` builds them.
rule model_card:
    input:
        unpack(card_inputs),
    output:
        card="results/{run}/cards/{src}/{ft}/seed{seed}/card.json",
        program="results/{run}/cards/{src}/{ft}/seed{seed}/model.pt2",
    log:
        "results/{run}/logs/model_card/{src}/{ft}/seed{seed}.log",
    conda:
        "../../environment.yml"
    threads: 1
    params:
        spec=card_spec,
        aa=lambda wildcards, input: (
            f"--autoattack-json {input.aa}" if input.get("aa") else ""
        ),
    message:
        "Model card of {wildcards.src}/{wildcards.ft} (seed {wildcards.seed})"
    shell:
        "python -m advss card --spec {params.spec:q} --data {input.data} --model {input.model}"
        " --test-json {input.test} {params.aa} --threads {threads} --device cpu"
        " --out-card {output.card} --out-program {output.program} > {log} 2>&1"
