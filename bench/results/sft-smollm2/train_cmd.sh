cd /work/main
OMP_NUM_THREADS=1 .venv/bin/alignchat sft --model smollm2-135m-instruct \
  --data runs/sft-smollm2/data/train.jsonl --eval-data runs/sft-smollm2/data/eval.jsonl --out runs/sft-smollm2 \
  max_steps=30 batch_size=2 seq_len=512 lr=1.5e-4 warmup_steps=3 trainable=last:8 \
  eval_every=15 eval_batches=4 save_every=0 log_every=1 progress=false \
  baseline_eval=false eval_limit=1000 eval_batch=32 eval_max_tokens=16
