"""recipetune's built-in plugins. Each module is a plugin registered through the
``recipetune`` entry-point group, exactly as a third-party package would be, and
uses only the public API of :mod:`recipetune`."""
