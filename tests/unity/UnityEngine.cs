// The part of UnityEngine that BlendtalkLive.cs uses, for compiling and running it under Mono in the
// tests (no Unity here). Quaternions follow Unity's documented conventions: Euler(x, y, z) turns about
// z, then x, then y (q = qy qx qz), each by the right-hand rule in Unity's axes (+x right, +y up, +z
// forward): Euler(90, 0, 0) takes forward to down, Euler(0, 90, 0) forward to right, Euler(0, 0, 90)
// right to up.
using System;
using System.Collections.Generic;

namespace UnityEngine
{
    public class TooltipAttribute : Attribute { public TooltipAttribute(string text) { } }

    public static class Mathf { public const float Rad2Deg = 57.29578f; }

    public static class Debug
    {
        public static void Log(object message) { Console.Error.WriteLine(message); }
        public static void LogWarning(object message) { Console.Error.WriteLine(message); }
    }

    public struct Vector3
    {
        public float x, y, z;
        public Vector3(float x, float y, float z) { this.x = x; this.y = y; this.z = z; }
    }

    public struct Quaternion
    {
        public float x, y, z, w;
        public Quaternion(float x, float y, float z, float w) { this.x = x; this.y = y; this.z = z; this.w = w; }
        public static Quaternion identity { get { return new Quaternion(0, 0, 0, 1); } }

        static Quaternion Axis(float degrees, int axis)
        {
            double half = degrees * Math.PI / 360.0, s = Math.Sin(half);
            return new Quaternion(axis == 0 ? (float)s : 0, axis == 1 ? (float)s : 0, axis == 2 ? (float)s : 0, (float)Math.Cos(half));
        }

        public static Quaternion Euler(float x, float y, float z) { return Axis(y, 1) * Axis(x, 0) * Axis(z, 2); }

        public static Quaternion Inverse(Quaternion q) { return new Quaternion(-q.x, -q.y, -q.z, q.w); }

        public static Quaternion operator *(Quaternion a, Quaternion b)
        {
            return new Quaternion(a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
                                  a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x,
                                  a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w,
                                  a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z);
        }

        public static Vector3 operator *(Quaternion q, Vector3 v)
        {
            var r = q * new Quaternion(v.x, v.y, v.z, 0) * Inverse(q);
            return new Vector3(r.x, r.y, r.z);
        }
    }

    public class Object { public string name = ""; }

    public class Transform : Object
    {
        public Transform parent;
        public Quaternion localRotation = Quaternion.identity;

        public Quaternion rotation
        {
            get { return parent == null ? localRotation : parent.rotation * localRotation; }
            set { localRotation = parent == null ? value : Quaternion.Inverse(parent.rotation) * value; }
        }
    }

    public class Component : Object { public Transform transform = new Transform(); }

    public class MonoBehaviour : Component { }

    public class Mesh : Object
    {
        public List<string> Names = new List<string>();
        public int blendShapeCount { get { return Names.Count; } }
        public string GetBlendShapeName(int index) { return Names[index]; }
    }

    public class SkinnedMeshRenderer : Component
    {
        public Mesh sharedMesh;
        public Dictionary<int, float> Weights = new Dictionary<int, float>();
        public void SetBlendShapeWeight(int index, float value) { Weights[index] = value; }
    }
}
