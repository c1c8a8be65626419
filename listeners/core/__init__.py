"""The shared kit: no tool policy. Imports nothing from a wing or a tool."""
