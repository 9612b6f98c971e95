"""Contrastive pretraining of the shipped compact SEM CLIP backbone on sem-synth images with
method-neutral captions (``pretrain`` command), its evaluation and its model card; the held-out
defect types (``data.labels.EXCLUDED_TYPES``) never appear in it.
"""
