"""The Hugging Face side of the CoLA fine-tuning benchmark: the recipe of `qkv finetune classify` run with
transformers' Trainer — same model directory, data, hyper-parameters, seed and epochs — printing the best
epoch's dev Matthews correlation and the wall time as JSON.

    python finetune_cola.py --model DIR --train train.tsv --dev dev.tsv --out OUT [--seed 42] [--epochs 3]
"""

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)


def read_tsv(path):
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text, label = line.rstrip("\n").rsplit("\t", 1)
            texts.append(text)
            labels.append(int(label))
    return texts, labels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)

    def dataset(path):
        texts, labels = read_tsv(path)
        encoded = tokenizer(texts, truncation=True, max_length=args.max_length)
        return [{"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": label}
                for ids, types, mask, label in zip(encoded["input_ids"], encoded["token_type_ids"],
                                                   encoded["attention_mask"], labels)]

    def metrics(prediction):
        predicted = np.argmax(prediction.predictions, axis=-1)
        gold = prediction.label_ids
        return {"accuracy": accuracy_score(gold, predicted), "f1": f1_score(gold, predicted),
                "mcc": matthews_corrcoef(gold, predicted)}

    training = TrainingArguments(
        output_dir=args.out, learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, num_train_epochs=args.epochs, weight_decay=0.0, warmup_ratio=0.0,
        max_grad_norm=1.0, seed=args.seed, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="mcc", greater_is_better=True, report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, logging_strategy="no", save_total_limit=1)
    trainer = Trainer(model=model, args=training, train_dataset=dataset(args.train), eval_dataset=dataset(args.dev),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics)
    trainer.train()
    best = trainer.evaluate()
    print(json.dumps({"mcc": best["eval_mcc"], "accuracy": best["eval_accuracy"], "f1": best["eval_f1"],
                      "seconds": time.perf_counter() - started, "seed": args.seed,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
