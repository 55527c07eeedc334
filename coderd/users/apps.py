from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "coderd.users"
    label = "users"
    verbose_name = "Users and organizations"
