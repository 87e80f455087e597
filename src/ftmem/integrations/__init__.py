"""ftmem inside a training script: estimate the run from its live objects before step 1,
report what was measured after a few steps (issue 20).

- :mod:`ftmem.integrations.hf`: ``FtmemCallback``, a transformers ``TrainerCallback``
  for HF Trainer and TRL's trainers (imports transformers and torch).
- :mod:`ftmem.integrations.live`: what is read from the live model, optimizer and
  training arguments, by attribute (imports neither; the objects come from the caller).

Importing this package imports neither torch nor transformers (docs/integrations.md).
"""
