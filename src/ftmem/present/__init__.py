"""Presentation: everything ftmem shows a person or writes for another tool, and the only
package that imports rich. Tables, JSON / YAML / CSV / Markdown, the explained arithmetic,
pictures and engine configs, each from a finished result: no arithmetic of its own beyond
units. Nothing is imported here; the CLI imports the one module a command prints with."""
