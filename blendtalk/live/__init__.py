"""Live mode: audio chunks in, animation frames out as they are ready (`session.LiveSession`), the
versioned frame format (`stream`), the WebSocket server beside the app (`server`), the browser page
(`web/`; the face it draws is `render.gltf.write_rig_glb(..., posable=True)`) and the terminal command (`cli`)."""
