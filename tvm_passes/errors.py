"""The two user-facing errors of the compile side; the CLI prints their message on one line."""


class ExportError(Exception):
    """A model, option or input the exporter cannot take (exit code 2 in ``gbd-export``)."""


class ArtifactError(Exception):
    """The artifact directory is incomplete or its library does not match the manifest."""
