#!/usr/bin/env bash
# The main job, on the embedded default model and real data: train Me-LoRA and MAP (LoRA) on OpenBookQA, evaluate
# both with `lm_eval --model melora` on the distribution-shift setting, and write the calibration report.
#
# It runs the same commands a user runs (scripts/train.py, lm_eval, melora report), reduced to fit ~30 minutes on
# 2 CPU cores: fewer steps, a validation subset, and `--limit` documents per test task. On the embedded 135M model it
# uses the length-normalised cloze answer format (each choice's text scored as the continuation, its log-likelihood
# per character), because a model that small does not learn the paper's letter read-out in a CPU budget and OBQA's
# choices differ in length; letters stay the default for Llama-2 runs. The full protocol:
#
#   accelerate launch scripts/train.py --method melora --task obqa --model meta-llama/Llama-2-7b-hf --output-dir D
#   lm_eval --model melora --model_args pretrained=meta-llama/Llama-2-7b-hf,adapter=D/adapter-best,samples=10 \
#       --tasks melora_ood --output_path R --log_samples
#   melora report R --out REPORT --compare paper-7b
#
# Settings (environment variables): MELORA_MAIN_OUT (runs/main), MELORA_MAIN_STEPS (150), MELORA_MAIN_LIMIT (50),
# MELORA_MAIN_SAMPLES (10), MELORA_MAIN_TASKS (melora_ood_cloze_norm), MELORA_MAIN_MODEL (the embedded model),
# MELORA_MAIN_EVAL_LIMIT (100 validation questions during training).
set -euo pipefail

out=${MELORA_MAIN_OUT:-runs/main}
steps=${MELORA_MAIN_STEPS:-150}
limit=${MELORA_MAIN_LIMIT:-50}
samples=${MELORA_MAIN_SAMPLES:-10}
tasks=${MELORA_MAIN_TASKS:-melora_ood_cloze_norm}
eval_limit=${MELORA_MAIN_EVAL_LIMIT:-100}
model=${MELORA_MAIN_MODEL:-$("${PYTHON:-python}" -c "import melora; print(melora.prepare_model())")}
python=${PYTHON:-python}
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)

say() { printf '\n=== %s (%ss elapsed)\n' "$*" "$(($(date +%s) - start))"; }

say "Reduced main job: ${steps} training steps, ${limit} test documents per task, ${samples} posterior samples"
echo "model: ${model}; answer format: cloze_norm; output: ${out}"

for method in melora map; do
  say "Training ${method} on OBQA"
  "$python" "$here/train.py" --method "$method" --task obqa --model "$model" --answer-format cloze_norm \
    --output-dir "$out/train-$method" --max-steps "$steps" --lr 3e-4 --eval-every "$((steps / 2))" \
    --eval-limit "$eval_limit" --eval-samples 4 --overwrite
done

say "Evaluating the base model, MAP and Me-LoRA with lm_eval on ${tasks}"
common=(--tasks "$tasks" --limit "$limit" --device cpu --batch_size 8 --log_samples)
lm_eval --model hf --model_args "pretrained=${model},dtype=float32" "${common[@]}" --output_path "$out/eval/base"
lm_eval --model melora --model_args "pretrained=${model},adapter=$out/train-map/adapter-best,samples=0" \
  "${common[@]}" --output_path "$out/eval/map"
lm_eval --model melora \
  --model_args "pretrained=${model},adapter=$out/train-melora/adapter-best,samples=${samples}" \
  "${common[@]}" --output_path "$out/eval/melora"

say "Writing the report"
melora report "$out/eval" --out "$out/report" --compare paper-13b

say "Done"
echo "Report: $out/report/report.md (figures in $out/report/figures/)"
echo "This was a reduced run (${steps} steps, --limit ${limit}); see the header of scripts/main_job.sh for the full protocol."
echo
sed -n '1,40p' "$out/report/report.md"
