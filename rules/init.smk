rule init:
    output:
        model=INIT_FILE,
    params:
        settings=init_params,
    log:
        INIT_FILE.replace("results/", "logs/").replace(".pt", ".log"),
    script:
        "../workflow/scripts/init.py"
