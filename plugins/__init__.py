"""Built-in plugins, registered through the `samora_kit` entry-point group like any third party."""
