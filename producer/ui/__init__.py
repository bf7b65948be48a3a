"""The web dashboard (`distillery ui`, and `/ui` of `distillery serve`): docs/ui.md."""
