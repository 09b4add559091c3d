"""Live mode: audio chunks in, animation frames out as they are ready (`session.LiveSession`), the
versioned frame format (`stream`), the WebSocket server beside the app (`server`), the browser page
(`web/`), the ARKit-morph GLB it draws (`glb`) and the terminal command (`cli`)."""
