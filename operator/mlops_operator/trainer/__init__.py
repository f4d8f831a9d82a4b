"""The trainer: ``mlops-operator train`` runs one TrainingJob run inside its pod (see ``cli``)."""
