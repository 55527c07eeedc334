from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    name = "coderd.workspaces"
    label = "workspaces"
    verbose_name = "Templates and workspaces"
