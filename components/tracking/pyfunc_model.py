"""Models-from-code entry for MLflow: logged with the pyfunc so that loading it needs no pickle."""

import mlflow.models

from components.tracking.pyfunc import DraftEditModel

mlflow.models.set_model(DraftEditModel())
