# Tables and figures, from result files only: one local rule per entry of REPORTS
# (report_inputs.smk), named by its key (`snakemake table3` builds Table 3).
for _name in REPORTS:

    rule:
        name:
            _name
        input:
            REPORTS[_name].inputs,
        output:
            **result_outputs(_name),
        log:
            f"results/{RUN}/logs/report/{result_file(_name)}.log",
        localrule: True
        conda:
            "../../environment.yml"
        params:
            spec=REPORTS[_name].spec,
            # bound now: a shell command is evaluated when the job runs, after the loop has moved on
            kind=result_kind(_name),
            file=result_file(_name),
            out=result_main(_name),
        message:
            REPORTS[_name].message
        shell:
            "python -m advss {params.kind} {params.file} --spec {params.spec:q} --out {params.out} > {log} 2>&1"
