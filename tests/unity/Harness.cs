// Drives BlendtalkLive as Unity would (Start, then Update every few ms) on a stand-in character and
// prints one JSON line per applied frame: the blendshape weights, and the head's nose and crown and
// the left eye's gaze as directions in the character's frame. Usage: mono harness.exe URL SECONDS
using System;
using System.Globalization;
using System.Reflection;
using System.Threading;
using UnityEngine;

static class Harness
{
    static string Vec(Vector3 v)
    {
        return string.Format(CultureInfo.InvariantCulture, "[{0:R},{1:R},{2:R}]", v.x, v.y, v.z);
    }

    static int Main(string[] args)
    {
        var live = new BlendtalkLive { Url = args[0] };
        var root = live.transform;
        root.localRotation = Quaternion.Euler(0, 30, 0);  // the character faces 30 degrees to the right
        var head = new Transform { parent = root, localRotation = Quaternion.Euler(-90, 0, 0) };  // bone axes of a Blender export
        var eye = new Transform { parent = head, localRotation = Quaternion.Euler(0, 0, 45) };
        var mesh = new Mesh();
        mesh.Names.AddRange(new[] { "Face.jawOpen", "blendShape1.MouthSmileLeft", "eyeBlinkLeft", "notArkit" });
        var face = new SkinnedMeshRenderer { sharedMesh = mesh };
        live.Faces = new[] { face };
        live.Head = head;
        live.LeftEye = eye;
        // Fixed points of the head and eye at rest, in their bones' coordinates: the nose (+z), the crown (+y).
        var forward = root.rotation * new Vector3(0, 0, 1);
        var up = root.rotation * new Vector3(0, 1, 0);
        var nose = Quaternion.Inverse(head.rotation) * forward;
        var crown = Quaternion.Inverse(head.rotation) * up;
        var pupil = Quaternion.Inverse(eye.rotation) * forward;
        var flags = BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public;
        typeof(BlendtalkLive).GetMethod("Start", flags).Invoke(live, null);
        var update = typeof(BlendtalkLive).GetMethod("Update", flags);
        var end = DateTime.UtcNow.AddSeconds(double.Parse(args[1], CultureInfo.InvariantCulture));
        var toCharacter = Quaternion.Inverse(root.rotation);
        bool ended = false;
        while (DateTime.UtcNow < end && !ended)
        {
            // Anything but connecting or streaming is the end (of the stream, or an error): one more Update takes the last frame.
            ended = !(live.Status == "idle" || live.Status == "streaming" || live.Status.StartsWith("connecting"));
            int applied = live.Applied;
            update.Invoke(live, null);
            if (live.Applied > applied)
            {
                var w = face.Weights;
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture,
                    "{{\"frame\":{0},\"jaw\":{1:R},\"smile\":{2:R},\"blink\":{3:R},\"other\":{4},\"nose\":{5},\"crown\":{6},\"gaze\":{7}}}",
                    live.FrameIndex, w[0], w[1], w[2], w.ContainsKey(3) ? "true" : "false",
                    Vec(toCharacter * (head.rotation * nose)), Vec(toCharacter * (head.rotation * crown)),
                    Vec(toCharacter * (eye.rotation * pupil))));
            }
            Thread.Sleep(5);
        }
        Console.Error.WriteLine("status: " + live.Status + "; received " + live.Received + ", applied " + live.Applied);
        return live.Applied > 0 ? 0 : 1;
    }
}
