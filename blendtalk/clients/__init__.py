"""Code that runs inside other tools and talks to blendtalk's files and live stream (Blender)."""
