"""ftmem inside a training script: estimate the run from its live objects before step 1,
report what was measured after a few steps (issue 20).

- :mod:`ftmem.integrations.hf`: ``FtmemCallback``, a transformers ``TrainerCallback``
  for HF Trainer and TRL's trainers (imports transformers and torch).
- :mod:`ftmem.integrations.lightning`: ``FtmemCallback``, a Lightning ``Callback``, and
  ``check`` for Fabric (imports lightning and torch).
- :mod:`ftmem.integrations.torchtune`: ``check`` for a torchtune recipe's config (an
  estimate only; imports torch).
- :mod:`ftmem.integrations.litgpt`: a LitGPT ``GPT`` read from its live config, for the
  Lightning callback (imports neither torch nor litgpt).
- :mod:`ftmem.integrations.live`: what is read from the live model, optimizer and
  training arguments, by attribute (imports neither; the objects come from the caller).
- :mod:`ftmem.integrations.preflight`: what every integration does with a read run:
  the estimate, the fit check, the measured step (imports torch).
- :mod:`ftmem.integrations.report`: the lines printed, the loggers' numbers and the
  record, one format with ``ftmem record`` (imports neither).

Importing this package imports neither torch nor transformers (docs/integrations.md).
"""
