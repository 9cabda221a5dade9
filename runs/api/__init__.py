"""The JSON API's run router (`runs`), its schemas and authentication. Mounted, with the
datasets router, by `tunixrt.api`."""
