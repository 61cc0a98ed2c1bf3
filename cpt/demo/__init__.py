"""Demo and test material: the realistic sample-WARC generator and a tiny random Llama.

The library never imports this package (`tests/test_layers.py` checks it); `make demo`, the tests and
the benchmarks do:

    python -m cpt.demo.sample_warc OUT.warc.gz --articles 80
    python -m cpt.demo.tiny_model --tokenizer DIR --output DIR
"""
