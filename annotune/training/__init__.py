"""Training: what train.py trains on (training_set.py), the loop (trainer.py), an epoch's end
(epoch_end.py), run folders (resume.py), K-fold training (folds.py). Imports the stages below it, its validation the real
evaluation of labelling/."""
