"""The configuration with MAILER_* environment variables over the file's keys,
read by pydantic-settings: ``mailer.config.settings`` validates with this
class only when such a variable is set, as the library takes a tenth of a
quick command's time to load."""

from __future__ import annotations

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mailer.config import Config
from mailer.config_cache import ENV_PREFIX


class EnvConfig(Config, BaseSettings):
    """``Config``, its values from the environment first, then the file's."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the file, which arrives as init values."""
        return env_settings, init_settings
