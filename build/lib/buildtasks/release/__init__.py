"""Publishing: verified multi-platform pushes, version bumps, changelogs, the release flow."""
