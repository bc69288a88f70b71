"""Writes a randomly initialised GPT-2 small (124M parameters, transformers' default GPT2Config) to DIR with
save_pretrained, for the generation benchmark. Seeded, so every machine gets the same weights."""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1])
