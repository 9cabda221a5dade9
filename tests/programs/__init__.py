"""Small real programs that tests run as training children (they import no Django)."""
