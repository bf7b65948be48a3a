"""Training a student on this machine: the local fine-tuning backend.

`extra` says whether the train extra (torch, transformers, peft, gguf) is installed, without
importing it; `base` finds and loads the base model; `data` turns a chat fine-tuning file
into token ids with the loss on assistant tokens only; `loop` trains a LoRA adapter;
`export` writes the merged student as a GGUF; `run` does one `fine_tunes` row end to end.
Only `extra` and `base`'s path checks may be imported without the extra installed.
"""
