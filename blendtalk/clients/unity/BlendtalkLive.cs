// blendtalk live stream -> a Unity face: ARKit blendshapes, head and eyes, from
// `python -m blendtalk live --input mic --emit ws://0.0.0.0:8765` (frame format "blendtalk-live" v1).
//
// Put this file in Assets/, add the component to the character (its +z is the face's forward), set
// Url to the ws://HOST:PORT/?token=TOKEN the command prints, drag in the SkinnedMeshRenderers whose
// blendshapes carry ARKit names (jawOpen, mouthSmileLeft ...; any case, "Mesh.jawOpen" prefixes are
// ignored) and, if it has them, the head and eye bones. The newest frame is applied every Update;
// frames that arrive between two Updates are skipped, never queued. Desktop and mobile players and the
// Editor (System.Net.WebSockets); not WebGL builds. MIT licence, part of blendtalk.
//
// Rotations: the stream's head [pitch, yaw, roll] and eyes [yaw, pitch] are radians in blendtalk's
// right-handed axes (+x the face's left, +y up, +z out of the face). Unity's axes mirror x (+x the
// character's right), so the head turns by Quaternion.Euler(pitch, -yaw, roll) and each eye by
// Quaternion.Euler(-pitch, -yaw, 0), in degrees, in the character's frame, on top of the bone's
// rotation when the component started (its rest).

using System;
using System.Collections.Generic;
using System.Globalization;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using UnityEngine;

public class BlendtalkLive : MonoBehaviour
{
    [Tooltip("ws://HOST:PORT/?token=TOKEN, as `python -m blendtalk live --emit ws://...` prints it")]
    public string Url = "ws://127.0.0.1:8765/?token=";
    [Tooltip("Meshes whose blendshapes carry ARKit names")]
    public SkinnedMeshRenderer[] Faces = new SkinnedMeshRenderer[0];
    public Transform Head, LeftEye, RightEye;
    [Tooltip("Unity blendshape weight for an ARKit weight of 1")]
    public float WeightScale = 100f;
    [Tooltip("0 = the character's head stays still, 1 = blendtalk's head motion")]
    public float HeadAmount = 1f;

    /// <summary>What the component is doing, in one line ("connecting", "streaming", or what went wrong).</summary>
    public string Status { get; private set; } = "idle";
    /// <summary>Frames received and frames applied since Start, and the stream's index of the last applied.</summary>
    public int Received { get; private set; }
    public int Applied { get; private set; }
    public int FrameIndex { get; private set; } = -1;

    class Frame
    {
        public int Index;
        public Dictionary<string, double> Arkit;
        public double[] Head, Eyes;
    }

    readonly object _lock = new object();
    Frame _newest;
    CancellationTokenSource _cancel;
    // Per face: (blendshape index, ARKit name in lower case) for every blendshape with an ARKit name.
    readonly List<KeyValuePair<SkinnedMeshRenderer, List<KeyValuePair<int, string>>>> _targets =
        new List<KeyValuePair<SkinnedMeshRenderer, List<KeyValuePair<int, string>>>>();
    Quaternion _headRest, _leftRest, _rightRest;

    void Start()
    {
        foreach (var face in Faces)
        {
            if (face == null || face.sharedMesh == null) continue;
            var shapes = new List<KeyValuePair<int, string>>();
            for (int i = 0; i < face.sharedMesh.blendShapeCount; i++)
                shapes.Add(new KeyValuePair<int, string>(i, ArkitKey(face.sharedMesh.GetBlendShapeName(i))));
            _targets.Add(new KeyValuePair<SkinnedMeshRenderer, List<KeyValuePair<int, string>>>(face, shapes));
        }
        if (Head != null) _headRest = Head.localRotation;
        if (LeftEye != null) _leftRest = LeftEye.localRotation;
        if (RightEye != null) _rightRest = RightEye.localRotation;
        if (!Url.StartsWith("ws://") && !Url.StartsWith("wss://"))
        {
            Status = "Url must start with ws:// (paste what `python -m blendtalk live --emit ws://...` prints)";
            Debug.LogWarning("blendtalk: " + Status);
            return;
        }
        _cancel = new CancellationTokenSource();
        Task.Run(() => Receive(Url, _cancel.Token));
    }

    void OnDisable()
    {
        if (_cancel != null) _cancel.Cancel();
    }

    /// <summary>"Face.JawOpen" or "blendShape1.jawOpen" -> "jawopen": what ARKit names are matched on.</summary>
    public static string ArkitKey(string blendshape)
    {
        int dot = blendshape.LastIndexOf('.');
        return (dot >= 0 ? blendshape.Substring(dot + 1) : blendshape).ToLowerInvariant();
    }

    void Update()
    {
        Frame frame;
        lock (_lock) { frame = _newest; _newest = null; }
        if (frame == null) return;
        foreach (var target in _targets)
            foreach (var shape in target.Value)
            {
                double w;
                if (frame.Arkit.TryGetValue(shape.Value, out w))
                    target.Key.SetBlendShapeWeight(shape.Key, (float)(Math.Max(0.0, Math.Min(1.0, w)) * WeightScale));
            }
        var character = transform.rotation;
        var headTurn = Quaternion.identity;
        if (frame.Head != null && frame.Head.Length == 3)
        {
            float rad = Mathf.Rad2Deg * HeadAmount;
            headTurn = Quaternion.Euler((float)frame.Head[0] * rad, -(float)frame.Head[1] * rad, (float)frame.Head[2] * rad);
            if (Head != null) Turn(Head, _headRest, character * headTurn * Quaternion.Inverse(character));
        }
        if (frame.Eyes != null && frame.Eyes.Length == 2)
        {
            var inHead = character * headTurn;  // the eyes turn about the head's axes
            var eye = Quaternion.Euler(-(float)frame.Eyes[1] * Mathf.Rad2Deg, -(float)frame.Eyes[0] * Mathf.Rad2Deg, 0f);
            var turn = inHead * eye * Quaternion.Inverse(inHead);
            if (LeftEye != null) Turn(LeftEye, _leftRest, turn);
            if (RightEye != null) Turn(RightEye, _rightRest, turn);
        }
        FrameIndex = frame.Index;
        Applied++;
    }

    /// <summary>The bone at its rest (under its parent's current rotation), then turned by `turn` in world space.</summary>
    static void Turn(Transform bone, Quaternion restLocal, Quaternion turn)
    {
        var parent = bone.parent != null ? bone.parent.rotation : Quaternion.identity;
        bone.rotation = turn * (parent * restLocal);
    }

    async Task Receive(string url, CancellationToken cancel)
    {
        using (var ws = new ClientWebSocket())
        {
            try
            {
                Status = "connecting to " + url.Split('?')[0];
                await ws.ConnectAsync(new Uri(url), cancel);
                Status = "streaming";
                var buffer = new byte[1 << 16];
                var message = new StringBuilder();
                while (ws.State == WebSocketState.Open && !cancel.IsCancellationRequested)
                {
                    var got = await ws.ReceiveAsync(new ArraySegment<byte>(buffer), cancel);
                    if (got.MessageType == WebSocketMessageType.Close)
                    {
                        // 4401: wrong token, 4429: too many clients; the server's reason says what to do
                        Status = got.CloseStatus == WebSocketCloseStatus.NormalClosure || got.CloseStatus == null
                            ? "the stream ended" : "the server closed the stream: " + got.CloseStatusDescription;
                        break;
                    }
                    message.Append(Encoding.UTF8.GetString(buffer, 0, got.Count));
                    if (!got.EndOfMessage) continue;
                    Handle(message.ToString());
                    message.Clear();
                }
            }
            catch (OperationCanceledException) { Status = "stopped"; }
            catch (Exception err) { Status = "no stream at " + url.Split('?')[0] + ": " + err.Message; }
        }
        if (Status != "stopped") Debug.Log("blendtalk: " + Status);
    }

    void Handle(string text)
    {
        var message = MiniJson.Parse(text) as Dictionary<string, object>;
        if (message == null || !message.ContainsKey("type")) return;
        var type = message["type"] as string;
        if (type == "notice" && message.ContainsKey("text"))
            Debug.Log("blendtalk: " + message["text"]);
        if (type == "end") Status = "the stream ended";
        if (type != "frame" || !message.ContainsKey("arkit")) return;
        var frame = new Frame { Arkit = new Dictionary<string, double>() };
        frame.Index = message.ContainsKey("frame") ? (int)(double)message["frame"] : -1;
        var arkit = message["arkit"] as Dictionary<string, object>;
        if (arkit != null)
            foreach (var pair in arkit)
                if (pair.Value is double) frame.Arkit[pair.Key.ToLowerInvariant()] = (double)pair.Value;
        frame.Head = Numbers(message, "head");
        frame.Eyes = Numbers(message, "eyes");
        lock (_lock) { _newest = frame; Received++; }
    }

    static double[] Numbers(Dictionary<string, object> message, string key)
    {
        object value;
        var list = message.TryGetValue(key, out value) ? value as List<object> : null;
        if (list == null) return null;
        var numbers = new double[list.Count];
        for (int i = 0; i < list.Count; i++)
        {
            if (!(list[i] is double)) return null;
            numbers[i] = (double)list[i];
        }
        return numbers;
    }
}

/// <summary>A small JSON reader (objects, arrays, strings, numbers as double, true/false/null): Unity's
/// JsonUtility cannot read the frame's "arkit" object, whose keys are the curve names.</summary>
public static class MiniJson
{
    public static object Parse(string text)
    {
        int at = 0;
        try
        {
            var value = Value(text, ref at);
            Space(text, ref at);
            return at == text.Length ? value : null;
        }
        catch (FormatException) { return null; }
        catch (IndexOutOfRangeException) { return null; }
        catch (ArgumentOutOfRangeException) { return null; }
    }

    static void Space(string s, ref int at)
    {
        while (at < s.Length && char.IsWhiteSpace(s[at])) at++;
    }

    static object Value(string s, ref int at)
    {
        Space(s, ref at);
        char c = s[at];
        if (c == '{')
        {
            var obj = new Dictionary<string, object>();
            at++;
            Space(s, ref at);
            if (s[at] == '}') { at++; return obj; }
            while (true)
            {
                Space(s, ref at);
                var key = Text(s, ref at);
                Space(s, ref at);
                if (s[at++] != ':') throw new FormatException();
                obj[key] = Value(s, ref at);
                Space(s, ref at);
                c = s[at++];
                if (c == '}') return obj;
                if (c != ',') throw new FormatException();
            }
        }
        if (c == '[')
        {
            var list = new List<object>();
            at++;
            Space(s, ref at);
            if (s[at] == ']') { at++; return list; }
            while (true)
            {
                list.Add(Value(s, ref at));
                Space(s, ref at);
                c = s[at++];
                if (c == ']') return list;
                if (c != ',') throw new FormatException();
            }
        }
        if (c == '"') return Text(s, ref at);
        foreach (var word in new[] { "true", "false", "null" })
            if (string.CompareOrdinal(s, at, word, 0, word.Length) == 0)
            {
                at += word.Length;
                return word == "null" ? null : (object)(word == "true");
            }
        int start = at;
        while (at < s.Length && "+-.eE0123456789".IndexOf(s[at]) >= 0) at++;
        return double.Parse(s.Substring(start, at - start), NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    static string Text(string s, ref int at)
    {
        if (s[at++] != '"') throw new FormatException();
        var sb = new StringBuilder();
        while (s[at] != '"')
        {
            char c = s[at++];
            if (c != '\\') { sb.Append(c); continue; }
            c = s[at++];
            switch (c)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'u': sb.Append((char)Convert.ToInt32(s.Substring(at, 4), 16)); at += 4; break;
                default: sb.Append(c); break;  // \" \\ \/
            }
        }
        at++;
        return sb.ToString();
    }
}
