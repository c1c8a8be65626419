"""The exporter's insides: state, snapshot, /proc reader, renderer, web server, status page."""
