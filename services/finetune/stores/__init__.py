"""What the finetune service keeps in the object store: datasets, models, pseudo labels read."""
