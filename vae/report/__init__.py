"""The report on a trained VAE (`report.py`): one function per section, each returning its numbers, the
rows that name and explain them and its pictures (`page.Section`); `make.make_report` runs them in
order and writes the page, report.json, the pictures and the per-image scores.

    samples.py     how far the prior samples are from real images (features.py: the classifier whose
                   features they are compared in; metrics.py: the Fréchet distance and its floor)
    latents.py     active units, probes of the posterior means, traversals, reconstructions
    likelihood.py  each test image's negative ELBO and NLL, the out-of-distribution AUROC
    run_card.py    the training curves and the run card
    logger.py      reading the run's curves from its logger, writing the report's numbers into it
    page.py        the HTML page
"""
