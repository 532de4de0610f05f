"""Stage logic of draftedit, usable without Prefect or MLflow."""
